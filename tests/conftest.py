"""Shared fixtures: the tiny offline suite (built once per session) and one local Ray for all tests."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from posttrain.models.tiny import build_tiny_suite

    return build_tiny_suite(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tokenizer(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models["student"])


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from posttrain.cluster import init_ray
    from posttrain.config import RayConfig

    init_ray(RayConfig())
    yield
    ray.shutdown()
