"""Security defaults, checked on the source and the config: remote code off unless the config turns
it on, no pickle loading of weights by posttrain itself, Ray's dashboard local."""

from __future__ import annotations

import ast
from pathlib import Path

from posttrain.config import ModelConfig, OPDConfig, RayConfig, SFTConfig, load_config

PACKAGE = Path(__file__).resolve().parents[1] / "posttrain"


def calls(name: str):
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == name:
                yield f"{path.relative_to(PACKAGE.parent)}:{node.lineno}", node


def test_every_from_pretrained_passes_the_configs_trust_remote_code():
    found = list(calls("from_pretrained"))
    assert len(found) > 5
    for where, node in found:
        if getattr(node.func.value, "id", None) == "GenerationConfig":
            continue  # generation_config.json is read as JSON: there is no code in it to trust or refuse
        keywords = {k.arg: k.value for k in node.keywords}
        assert "trust_remote_code" in keywords, f"{where}: from_pretrained without trust_remote_code="
        value = keywords["trust_remote_code"]
        # Never a literal True: the flag always comes from the config (or a parameter that defaults to False).
        assert not (isinstance(value, ast.Constant) and value.value is True), f"{where}: trust_remote_code=True"
    assert ModelConfig.trust_remote_code is False
    assert not load_config(SFTConfig, "configs/tiny/sft.yaml").model.trust_remote_code
    assert not load_config(OPDConfig, "configs/marco_mini/opd.yaml").model.trust_remote_code


def test_posttrain_never_unpickles_weights():
    """Models are read as safetensors (transformers), RNG states as safetensors; any torch.load must be weights_only."""
    for where, node in calls("load"):
        if getattr(node.func, "value", None) is not None and getattr(node.func.value, "id", None) == "torch":
            keywords = {k.arg: k.value for k in node.keywords}
            assert isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True, where
    for where, node in calls("save_pretrained"):
        keywords = {k.arg: k.value for k in node.keywords}
        if "state_dict" in keywords:  # the model export
            assert isinstance(keywords.get("safe_serialization"), ast.Constant) and keywords["safe_serialization"].value


def test_ray_dashboard_is_off_or_local_by_default():
    assert RayConfig().include_dashboard is False and RayConfig().dashboard_host == "127.0.0.1"
    for path in ("configs/tiny/sft.yaml", "configs/tiny/opd.yaml", "configs/marco_mini/sft.yaml"):
        cfg = load_config(SFTConfig if "sft" in path else OPDConfig, path)
        assert cfg.ray.dashboard_host == "127.0.0.1" and not cfg.ray.include_dashboard, path
    # init_ray's local start (the ray.init without an address) passes both; joining a cluster starts no dashboard.
    local = [(where, node) for where, node in calls("init") if "cluster.py" in where
             and not any(k.arg == "address" for k in node.keywords)]
    assert len(local) == 1
    where, node = local[0]
    assert {"include_dashboard", "dashboard_host"} <= {k.arg for k in node.keywords}, where
