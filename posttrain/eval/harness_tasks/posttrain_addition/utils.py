"""The dataset of the `posttrain_addition` harness task: the jsonl beside this file (lm-evaluation-harness
imports this module by its path, through the task yaml's `custom_dataset: !function utils.load_addition`)."""

from pathlib import Path


def load_addition(**_metadata):
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(Path(__file__).with_name("addition.jsonl"))})
