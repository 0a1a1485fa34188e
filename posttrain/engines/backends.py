"""Engine backends by name (`rollout.backend`, `teacher.backend`): the worker classes a group runs.

A backend is two Ray actor classes, built as `cls(model_path, cfg, num_threads, trust_remote_code,
sleep_mode, size)` (`size`: `posttrain.engines.sizing.EngineSize`, what the config asks of an engine):
  rollout: `generate(prompts, seed, greedy) -> list[Sample]`, and the weight sync in vLLM's
    weight-transfer protocol: `start_weight_update()`, `update_weights(info)` per bucket (`info`:
    `posttrain.infra.weight_buckets.update_info`), `finish_weight_update()` (raises where a parameter
    was not loaded), and `node_id()` (the Ray node: buckets reach the sender's node by /dev/shm);
  teacher: `score(sequences, topk) -> list[Scores]`;
and both `sleep()` / `wake_up()` (colocated OPD) and a static `padding(cfg, model_path,
trust_remote_code, prompt_lens, response_lens)` that reports the pad fraction of a step's batches
(None where the backend does not pad). A new backend is one module with the two classes and one
`BACKENDS` entry (or `register_backend`).
"""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.config import ConfigError
from posttrain.engines.hf_rollout import HFRolloutWorker
from posttrain.engines.hf_teacher import HFTeacherWorker
from posttrain.engines.vllm import VLLMRolloutWorker, VLLMTeacherWorker


@dataclass(frozen=True)
class Backend:
    rollout: type
    teacher: type


BACKENDS: dict[str, Backend] = {
    "hf": Backend(rollout=HFRolloutWorker, teacher=HFTeacherWorker),  # transformers: CPU or GPU
    "vllm": Backend(rollout=VLLMRolloutWorker, teacher=VLLMTeacherWorker),
}


def register_backend(name: str, backend: Backend) -> None:
    BACKENDS[name] = backend


def backend(name: str, key: str) -> Backend:
    """The backend `name`, which the config field `key` chose."""
    if name not in BACKENDS:
        raise ConfigError(f"'{key}' must be one of {list(BACKENDS)}, got {name!r}")
    return BACKENDS[name]
