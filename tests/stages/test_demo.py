"""`posttrain demo --backend vllm`: the demo's OPD stage runs its engines on the backend asked for."""

import pytest

from posttrain.cli import main
from posttrain.stages import demo


class Stop(Exception):
    pass


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_the_demo_runs_the_opd_engines_on_the_backend_asked_for(backend, tmp_path, monkeypatch):
    """SFT and OPD themselves are the stages' tests; here the OPD config the demo builds is caught."""
    seen = {}
    monkeypatch.setattr(demo, "run_sft", lambda cfg, overwrite: tmp_path / "sft" / "final")
    monkeypatch.setattr(demo, "stage_rows", lambda *args: [])

    def run_opd(cfg, overwrite):
        seen["cfg"] = cfg
        raise Stop

    monkeypatch.setattr(demo, "run_opd", run_opd)
    with pytest.raises(Stop):
        main(["demo", "--output-dir", str(tmp_path), "--backend", backend])
    cfg = seen["cfg"]
    assert cfg.rollout.backend == cfg.teacher.backend == backend and cfg.model.path == str(tmp_path / "sft" / "final")
    assert [stage.backend for stage in cfg.teachers] == ["", "hf"]  # the qwen3_next teacher keeps hf (CPU vLLM cannot)
