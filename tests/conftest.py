"""Shared fixtures: the tiny offline suite (built once per session) and one local Ray for all tests."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def tiny_suite_key() -> str:
    """What the tiny suite is built from: the code and data that build it and the library versions that
    train it (the build is bit-exact from these and the seed)."""
    import tokenizers
    import torch
    import transformers

    digest = hashlib.sha256(f"{torch.__version__} {transformers.__version__} {tokenizers.__version__}".encode())
    for path in sorted([*(ROOT / "posttrain" / "models").glob("*.py"), *(ROOT / "posttrain" / "data").glob("*.py"),
                        *(p for p in (ROOT / "data_mixtures").rglob("*") if p.is_file())]):
        digest.update(path.relative_to(ROOT).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """The tiny suite (about 3 minutes of CPU to build: the teachers' warm-up), built once per key and
    kept in ~/.cache/posttrain/tests, so CI's second pytest session (`-m slow`) and local reruns reuse
    it; each session gets its own copy, so no test can change the cached one."""
    from posttrain.models.tiny import MODEL_NAMES, build_tiny_suite

    from filelock import FileLock

    cache_root = Path(os.environ.get("POSTTRAIN_TEST_CACHE", Path.home() / ".cache" / "posttrain" / "tests"))
    cache_root.mkdir(parents=True, exist_ok=True)
    key = tiny_suite_key()
    with FileLock(cache_root / f"tiny-{key}.lock"):  # pytest-xdist's workers: one builds, the other waits
        cached = build_tiny_suite(cache_root / f"tiny-{key}", seed=0)  # returns at once when it is there
    copy = tmp_path_factory.mktemp("models") / "tiny"
    shutil.copytree(next(iter(cached.values())).parent, copy)
    return {name: copy / name for name in MODEL_NAMES}


@pytest.fixture(scope="session")
def tokenizer(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models["student"])


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from posttrain.infra.cluster import init_ray
    from posttrain.config import RayConfig

    init_ray(RayConfig())
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def sft_run(tiny_models, ray_local, tmp_path_factory):
    """The tiny SFT stage run once, as `posttrain demo` runs it; its `final/` is the OPD tests' student."""
    from posttrain.config import SFTConfig, load_config
    from posttrain.stages.sft import run_sft

    out = tmp_path_factory.mktemp("runs") / "sft"
    run_sft(load_config(SFTConfig, "configs/tiny/sft.yaml", [
        f"model.path={tiny_models['student']}", f"output_dir={out}", "logging.progress_bar=false"]))
    return out


@pytest.fixture(scope="session")
def sft_fault_run(tmp_path_factory) -> tuple[str, ...]:
    """The overrides of the SFT fault tests' common run: 6 steps, checkpoints at 2, 4 and 6, small data."""
    from tests.helpers import SFT_FAULT_RUN, small_sft_mixture

    return (*SFT_FAULT_RUN, f"data.mixture={small_sft_mixture(tmp_path_factory.mktemp('data'))}")


@pytest.fixture(scope="session")
def sft_straight(tiny_models, ray_local, sft_fault_run, tmp_path_factory):
    """That run undisturbed: what the killed and interrupted SFT runs must end on."""
    from posttrain.stages.sft import run_sft
    from tests.helpers import sft_config

    out = tmp_path_factory.mktemp("sft") / "straight"
    run_sft(sft_config(tiny_models, out, *sft_fault_run))
    return out


@pytest.fixture(scope="session")
def undisturbed(tiny_models, ray_local, tmp_path_factory):
    """The OPD fault tests' undisturbed run (2 + 3 steps), which the disturbed ones are compared with."""
    from posttrain.stages.opd.loop import run_opd
    from tests.helpers import FAULT_RUN, opd_config

    out = tmp_path_factory.mktemp("opd") / "undisturbed"
    run_opd(opd_config(tiny_models, out, (2, 3), *FAULT_RUN))
    return out


def pytest_collection_modifyitems(config, items):
    """One file that needs the tiny suite first, then every file that does not, then the rest: under
    pytest-xdist one worker builds the suite (~3 min on a fresh machine) while the other runs the files
    that need no model, instead of both waiting on the build's lock. Files stay whole (--dist loadfile)."""
    files: dict = {}
    for item in items:
        files.setdefault(item.path, []).append(item)
    needs_models = [path for path, its in files.items() if any("tiny_models" in i.fixturenames for i in its)]
    no_models = [path for path in files if path not in needs_models]
    items[:] = [item for path in needs_models[:1] + no_models + needs_models[1:] for item in files[path]]
