"""Run logs: metrics.jsonl and, beside TensorBoard, Weights & Biases (the optional extra) offline."""

import sys

import pytest

from posttrain.config import ConfigError, LoggingConfig
from posttrain.infra.runlog import RunLog, check_wandb


def test_wandb_offline_logs_every_step_and_a_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: offline must not need it
    cfg = LoggingConfig(wandb="offline", tensorboard=False, progress_bar=False)
    with RunLog(tmp_path, cfg, 3, desc="sft", run_config={"optim": {"lr": 0.1}}) as log:
        log.log({"step": 1, "loss": 2.5, "expert_imbalance": [1.0, 1.5]})
        log.log({"step": 2, "loss": 1.5})
    with RunLog(tmp_path, cfg, 3, start_step=2, desc="sft") as log:
        log.log({"step": 3, "loss": 1.25})
    run_id = (tmp_path / "wandb" / "run_id").read_text()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(run.name.endswith(run_id) for run in runs)  # one W&B run, resumed
    history = b"".join(f.read_bytes() for run in runs for f in run.glob("*.wandb"))
    assert b"loss" in history and b"expert_imbalance/1" in history


def test_wandb_without_the_package_is_refused_before_any_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"logging\.wandb=offline needs Weights & Biases: pip install 'posttrain\[wandb\]'"):
        check_wandb(LoggingConfig(wandb="offline"))
    check_wandb(LoggingConfig())  # off: nothing needed
