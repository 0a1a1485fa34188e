"""The card's two mixtures run end to end on schema fixtures: every dataset the Marco-Mini-Instruct card names is
loaded by `datasets.load_dataset` from a local copy of its repository laid out as the hub's (tests/fixtures/hub:
its subsets, splits, files and columns, each README naming where the layout was read), then validated,
chat-templated, tokenised and packed by the same code a hub load goes through. The card's two non-public
sources are slots, filled here as a user would fill them (a copy of the mixture with `path:` set)."""

import json

import pytest
import yaml

from posttrain.config import DataConfig, OPDDataConfig
from posttrain.data.mixture import HUB_MIRROR_ENV, DataError, load_mixture, load_mixture_spec
from posttrain.data.prompts import OPDPrompts
from posttrain.data.sft import SFTData
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures"
# The Marco-Mini-Instruct card's `datasets:` (../shared/seeds): SFT's two public sets, OPD's eight.
CARD_DATASETS = {
    "allenai/Dolci-Instruct-SFT", "nvidia/Nemotron-Cascade-2-SFT-Data", "nvidia/Nemotron-RL-instruction_following",
    "nvidia/Nemotron-RL-instruction_following-structured_outputs", "nvidia/Nemotron-RL-ReasoningGym-v1",
    "nvidia/Nemotron-RL-knowledge-mcqa", "nvidia/Nemotron-Cascade-RL-RLHF", "BytedTsinghua-SIA/DAPO-Math-17k",
    "Skywork/Skywork-OR1-RL-Data", "nvidia/Nemotron-SFT-Multilingual-v1",
}


@pytest.fixture
def mirror(monkeypatch):
    monkeypatch.setenv(HUB_MIRROR_ENV, str(FIXTURES / "hub"))


def filled(tmp_path, name: str, stage: str) -> str:
    """A copy of the card's mixture with its non-public slots pointed at the fixtures' stand-ins."""
    raw = yaml.safe_load((ROOT / "data_mixtures" / f"{name}.yaml").read_text())
    for source in raw["sources"]:
        if "private" in source:
            source["path"] = str(FIXTURES / "private" / f"{source['name']}_{stage}.jsonl")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_every_card_dataset_is_in_a_card_mixture_with_a_schema_fixture():
    hub_ids = {s.hub for name in ("marco_mini_sft", "marco_mini_opd")
               for s in load_mixture_spec(ROOT / "data_mixtures" / f"{name}.yaml").sources if s.hub}
    assert hub_ids == CARD_DATASETS
    for hub_id in CARD_DATASETS:
        readme = (FIXTURES / "hub" / hub_id / "README.md").read_text()
        assert "Layout read from" in readme, hub_id  # where the layout came from, said with the fixture


def test_the_card_sft_mixture_validates_templates_tokenises_and_packs(tmp_path, tokenizer, mirror):
    spec_path = filled(tmp_path, "marco_mini_sft", "sft")
    data = SFTData(DataConfig(mixture=spec_path, max_seq_len=512, pack_tokens=1024), tokenizer)
    names = {s.name for s in load_mixture_spec(spec_path).sources}
    assert set(data.report.per_source) == names and data.report.dropped_overlong == 0
    batches = data.batch(0, len(data))  # packed: every example once, no padding, targets where the assistant wrote
    assert sum(b.num_examples for b in batches) == len(data) and all(b.num_tokens <= 1024 for b in batches)
    assert sum(int((b.labels != -100).sum()) for b in batches) == sum(sum(r["loss_mask"]) for r in data.dataset)
    rows = data.dataset
    cascade = next(r for r in rows if r["source"] == "cascade2_math")
    assert [m["role"] for m in cascade["messages"]] == ["system", "user", "assistant"]  # the system turn is kept
    text = tokenizer.decode(cascade["input_ids"])
    assert "You are not allowed to use any tools." in text and "\\boxed{" in text
    trained = tokenizer.decode([t for t, m in zip(cascade["input_ids"], cascade["loss_mask"]) if m])
    assert "<think>" in trained and "not allowed" not in trained  # only the assistant's turn is a target


def test_the_card_opd_mixture_reads_nemo_gym_records_and_chat_message_prompts(tmp_path, tokenizer, mirror):
    spec_path = filled(tmp_path, "marco_mini_opd", "opd")
    prompts = OPDPrompts(OPDDataConfig(mixture=spec_path, max_prompt_len=512), tokenizer)
    assert set(prompts.per_category) == {"instruction_following", "knowledge_reasoning", "alignment", "math",
                                         "multilingual"}
    rows = {r["source"]: r for r in prompts.dataset}
    assert set(rows) == {s.name for s in load_mixture_spec(spec_path).sources}
    structured = next(text for text in map(tokenizer.decode, prompts.dataset["input_ids"]) if "Ada is 36" in text)
    assert structured.count("<|im_start|>user") == 2  # two user turns, as the NeMo-Gym record has them
    assert rows["knowledge_mcqa"]["answer"] == "B" and rows["knowledge_mcqa"]["id"].startswith("a4f8c2d5")
    assert rows["dapo_math"]["answer"] in {"15", "4", "6", "24"}  # reward_model.ground_truth
    assert json.loads(rows["skywork_or1"]["answer"])[0] in {"15", "4", "6", "24"}
    multilingual = tokenizer.decode(rows["multilingual"]["input_ids"])  # a chat: the prompt is all before the reply
    assert multilingual.rstrip().endswith("<|im_start|>assistant") and "<|im_start|>user" in multilingual
    batch = prompts.batch(0, 8)
    assert len(batch) == 8 and all(p.input_ids for p in batch)


def test_a_card_mixture_with_an_empty_slot_stops_naming_it_before_any_source_loads(monkeypatch):
    monkeypatch.setenv(HUB_MIRROR_ENV, "/nonexistent")  # any hub load would fail: none must be tried
    spec = load_mixture_spec(ROOT / "data_mixtures" / "marco_mini_sft.yaml")
    with pytest.raises(DataError, match=r"source 'translation' is a slot for data that is not public \(the card's "
                                        r"web-mined NLLB.*give it `path: your_file\.jsonl`"):
        load_mixture(spec)


def test_a_hub_source_that_cannot_load_names_the_source_and_the_mirror(tmp_path, monkeypatch):
    monkeypatch.delenv(HUB_MIRROR_ENV, raising=False)
    (tmp_path / "m.yaml").write_text("sources:\n  - {name: gone, hub: nobody/no-such-dataset, split: train, "
                                     "format: prompt, weight: 1}\n")
    with pytest.raises(DataError, match=r"hub:nobody/no-such-dataset\[train\]: source 'gone': cannot load .*"
                                        r"POSTTRAIN_HUB_MIRROR/nobody/no-such-dataset"):
        load_mixture(load_mixture_spec(tmp_path / "m.yaml"))


def test_a_wrong_split_is_refused_naming_the_splits_there_are(tmp_path, mirror):
    (tmp_path / "m.yaml").write_text("sources:\n  - {name: sky, hub: Skywork/Skywork-OR1-RL-Data, split: train, "
                                     "format: prompt, weight: 1}\n")
    with pytest.raises(DataError, match=r"source 'sky': cannot load .*train.*math.*code"):
        load_mixture(load_mixture_spec(tmp_path / "m.yaml"))
