"""Typed run configuration: YAML files mapped onto dataclasses, with `key=value` overrides.

Every stage's config is a tree of dataclasses. `load_config(Cls, path, overrides)` reads the YAML,
applies dotted overrides (`trainer.num_workers=2`), and converts the result field by field, so an
unknown key, a wrong type or a missing required value fails at once with the dotted key, the file,
and the closest valid key — before any model or data is touched.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is unknown, missing or of the wrong type."""


REQUIRED: Any = dataclasses.MISSING  # a field with no default must be set by the YAML or an override


# The value checks are declared with the fields they check (`_check_values` walks the tree), so a
# check cannot name a field that does not exist.
def one_of(default, *allowed):
    """A field whose value must be one of `allowed`."""
    return field(default=default, metadata={"choices": allowed})


def positive(default=REQUIRED):
    """A number that must be > 0 (and finite)."""
    return field(default=default, metadata={"positive": True})


def non_negative(default):
    """A number that must be >= 0."""
    return field(default=default, metadata={"non_negative": True})


def unit_interval(default):
    """A number that must lie in [0, 1]."""
    return field(default=default, metadata={"unit_interval": True})


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # Ray placement group strategies


# --------------------------------------------------------------------------------------------------
# The sections shared by every stage
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    path: str = REQUIRED  # local directory or hub id
    # A known architecture (posttrain.models.architectures) the model is expected to have, so the
    # config can be planned and checked on the meta device without the weights. "" = none.
    architecture: str = ""
    # When `path` does not exist and this is set, `posttrain tiny` builds the tiny offline suite
    # into `path`'s parent directory first (the CPU default needs no hub).
    build_tiny_if_missing: bool = False
    tiny_seed: int = 0
    dtype: str = one_of("float32", "float32", "bfloat16")  # the dtype of the trained weights
    # The trainer's attention over packed rows: "sdpa_packed" attends within each example at the cost of
    # the examples (posttrain.models.packed_attention; any device); "flash_attention_2" where flash-attn
    # is installed (GPU, bf16); "sdpa" builds a dense block mask per row (quadratic in the row).
    attn_implementation: str = "sdpa_packed"
    trust_remote_code: bool = False  # off unless a config turns it on
    # SFT: a model (hub id or path; the OPD teacher) whose chat template, end-of-turn and padding tokens and
    # generation config the student takes: it trains in that format and `final/` exports it, so the teachers score
    # a format the student speaks (posttrain.models.chat_format). "": the student's own. The vocabularies must match.
    chat_template_from: str = ""


@dataclass
class LoRAConfig:
    """Low-rank adapters (peft) on a frozen base: only the adapters train, and only they are checkpointed.

    `target_modules` are nn.Linear module names (the attention projections by default).
    `target_parameters` are raw parameters, for what is not an nn.Linear in transformers 5's
    qwen3_moe: the fused 3-D expert tensors `mlp.experts.gate_up_proj` / `mlp.experts.down_proj`
    and the router `mlp.gate.weight`. Trade-off: the experts hold ~95% of an MoE's weights, so
    adapting them moves far more of the model but costs one rank-r adapter per expert (E x the
    trainable parameters and optimizer state of a dense layer's adapter) and runs the expert
    matmuls through peft's parameter wrapper (slower); adapting the router changes which experts
    each token reaches, which OPD usually freezes (trainer.freeze_router) for stability.
    """

    enabled: bool = False
    rank: int = positive(8)
    alpha: float = positive(16.0)  # the update is scaled by alpha / rank
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    target_parameters: list[str] = field(default_factory=list)
    # The HF export in final/: "merged" (base + B·A under the base's names: plain
    # AutoModelForCausalLM and vLLM load it) or "adapter" (peft's adapter_model.safetensors only).
    export: str = one_of("merged", "merged", "adapter")


@dataclass
class DataConfig:
    mixture: str = REQUIRED  # data_mixtures/*.yaml
    max_seq_len: int = positive(512)  # tokens per example (prompt + response)
    overlong_policy: str = one_of("truncate", "truncate", "drop")  # always counted and reported
    pack_tokens: int = positive(4096)  # token budget of one packed micro-batch (no padding inside)
    shuffle: bool = True
    num_proc: int = 1  # processes for tokenisation with datasets.map


@dataclass
class OptimConfig:
    lr: float = positive(1e-3)
    min_lr: float = 1e-4  # cosine decays to this; ignored by "constant"
    schedule: str = one_of("cosine", "cosine", "constant")
    warmup_steps: int = non_negative(0)
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    # torch's fused AdamW kernel (CPU and CUDA): one pass over each tensor instead of a dozen
    # elementwise ops; what HF Trainer (and so TRL) uses by default since torch 2.8.
    fused: bool = True


@dataclass
class TrainerConfig:
    num_workers: int = positive(1)  # one Ray actor per device (per CPU process on a CPU machine)
    cpus_per_worker: float = 0  # 0: share the machine's CPUs evenly between the workers
    # torch threads of each worker; 0: its CPU share rounded down (at least 1). Ray's CPU counts are
    # logical: on a CPU machine where the OPD groups take turns, each may use every core.
    threads_per_worker: int = non_negative(0)
    gpus_per_worker: int = 0  # 1 on a GPU cluster
    # How Ray places the group's bundles (one per worker) on nodes: PACK (fewest nodes, best effort),
    # SPREAD (as many nodes as possible, best effort), STRICT_PACK (one node), STRICT_SPREAD (one node each).
    placement: str = one_of("PACK", *PLACEMENT_STRATEGIES)
    global_batch_size: int = positive(16)  # sequences per optimizer step, over all workers
    epochs: float = 1.0
    max_steps: int = non_negative(0)  # > 0 overrides epochs
    seed: int = 0  # the training's own randomness (rollout sampling, dropout); the data order is the mixture file's `seed`
    router_aux_loss_coef: float = 0.001  # load-balancing loss weight; 0 turns it off
    freeze_router: bool = False
    # Stop (after checkpointing) once this step is done, as a preempted job would; 0: run to the end.
    stop_after_step: int = non_negative(0)
    # Recompute each decoder layer's activations in the backward pass instead of keeping them
    # (transformers' gradient checkpointing, non-reentrant): activation memory ~ one layer's, ~+30% compute.
    activation_checkpointing: bool = False
    # The loss runs on the last hidden states at target positions only, this many at a time, each
    # chunk's logits recomputed in backward (posttrain.losses.chunked): no whole-row logits (at vocabulary
    # 151,936, 0.6 GB per 1,000 tokens in fp32, ~x3 with the loss's intermediates). The loss's peak is
    # then ~2 GB at 512 whatever the row length (benchmarks/loss_memory.py); larger chunks, fewer LM-head calls.
    loss_chunk_tokens: int = positive(512)
    # A step whose loss or gradient is not finite is skipped (no update) and counted; this many in a
    # row stop the run with a checkpoint to resume from. 0: never stop for it.
    max_nonfinite_in_a_row: int = non_negative(3)


@dataclass
class DeepSpeedConfig:
    # 2 or 3; or 0: nothing partitioned (plain data parallel) — the cheapest engine for one worker,
    # where ZeRO's flat-buffer copies partition nothing (benchmarks/sft_vs_trl.py measures the gap).
    zero_stage: int = one_of(2, 0, 2, 3)
    bf16: bool = False
    # ZeRO-Offload: keep the optimizer state (fp32 master weights, Adam moments) and run its step
    # on the host — 12 bytes per trainable parameter move off the device.
    offload_optimizer: str = one_of("none", "none", "cpu")
    # The optimizer that steps the offloaded state: auto | deepspeed (DeepSpeedCPUAdam) | torch (AdamW);
    # auto = deepspeed on a GPU machine, torch on a CPU-only one (see deepspeed_setup.host_optimizer).
    host_optimizer: str = one_of("auto", "auto", "deepspeed", "torch")
    # ZeRO-3 only: parameters live on the host and are fetched layer by layer for each pass.
    offload_params: str = one_of("none", "none", "cpu")
    # Merged last into the generated DeepSpeed config, for anything not exposed above.
    extra: dict = field(default_factory=dict)


@dataclass
class CheckpointConfig:
    every: int = positive(50)  # steps between checkpoints; the last step is always saved
    keep: int = positive(2)  # complete checkpoints retained
    # Resume checks every file's size against the manifest, and with this its sha256 too (reads the
    # checkpoint once: seconds here, minutes for a 17B model's optimizer states).
    verify_checksums: bool = True


@dataclass
class LoggingConfig:
    every: int = 1  # steps between console log lines when there is no progress bar
    progress_bar: bool = True
    tensorboard: bool = True
    # Weights & Biases beside TensorBoard (the optional extra `pip install posttrain[wandb]`): "offline"
    # writes the run under <output_dir>/wandb with no network (`wandb sync` uploads it later), "online" logs live.
    wandb: str = one_of("off", "off", "offline", "online")
    wandb_project: str = "posttrain"
    # Peak dense bf16 FLOP/s of one device, for MFU (e.g. 989e12 for an H100 SXM); 0: not reported.
    peak_flops_per_device: float = 0.0


@dataclass
class RayConfig:
    address: str = ""  # "" starts a local Ray; "auto" or host:port joins a cluster (also RAY_ADDRESS)
    dashboard_host: str = "127.0.0.1"
    include_dashboard: bool = False
    num_gpus_total: int = 0  # the whole allocation, for planning and the config's own record


@dataclass
class ClusterConfig:
    """The allocation as a whole. Group sizes are not repeated here: a group's GPUs are its
    `num_workers x gpus_per_worker` (CPUs likewise), the one source of truth (docs/scaling.md)."""

    # Nodes the run expects; > 0: the run stops at once, before any worker starts, when the Ray
    # cluster has fewer alive nodes (a half-started allocation), naming both numbers. 0: not checked.
    nodes: int = 0
    gpus_per_node: int = 8  # for `posttrain plan` (which traffic crosses nodes) and the node check


@dataclass
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    output_dir: str = "runs/sft"


@dataclass
class TeacherStage:
    path: str = REQUIRED  # local directory or hub id of the teacher
    steps: int = positive()  # optimizer steps distilled from this teacher before the next one
    # This stage's engine backend where it differs from teacher.backend ("": teacher.backend); e.g. hf for a
    # qwen3_next teacher that vLLM's CPU kernels cannot run (posttrain.engines.vllm.cpu_problem).
    backend: str = ""


@dataclass
class OPDDataConfig:
    mixture: str = REQUIRED  # prompt mixture (data_mixtures/opd_*.yaml)
    max_prompt_len: int = positive(256)  # longer prompts are truncated from the left or dropped (overlong_policy)
    overlong_policy: str = one_of("drop", "truncate", "drop")  # always counted and reported
    pack_tokens: int = positive(4096)  # token budget of one packed training micro-batch
    shuffle: bool = True


@dataclass
class RolloutConfig:
    # An engine backend by name (posttrain.engines.backends.BACKENDS: hf — transformers, CPU or GPU — and vllm).
    backend: str = "hf"
    num_workers: int = positive(1)
    # Ray's CPU counts are logical: on a small CPU machine, fractions let the three groups share cores.
    cpus_per_worker: float = 1
    threads_per_worker: int = non_negative(0)  # as trainer.threads_per_worker
    gpus_per_worker: int = 0
    placement: str = one_of("PACK", *PLACEMENT_STRATEGIES)  # as trainer.placement
    prompts_per_step: int = positive(8)
    samples_per_prompt: int = positive(2)
    max_new_tokens: int = positive(64)
    # OPD samples the student's own distribution: both must stay 1 (refused otherwise, with the reason:
    # `_check_sampling`). The fields remain for the engines' generation API.
    temperature: float = positive(1.0)
    top_p: float = 1.0
    batch_size: int = 16  # sequences generated together by one hf worker
    sync_bucket_mb: int = 512  # weight sync moves buckets of this size, not tensor by tensor
    # How the weights travel (posttrain.train.weight_stream): "shm" — /dev/shm buckets on the trainer's node,
    # Ray's object store once per other node; any backend, CPU or GPU. "nccl" — vLLM's NCCL weight-transfer
    # engine from trainer rank 0's GPU to every vLLM engine (GPU, rollout.backend vllm, not colocated;
    # written against vLLM 0.32, not run by this project's CPU tests).
    weight_transfer: str = one_of("shm", "shm", "nccl")
    gpu_memory_utilization: float = 0.5  # vllm
    # Share the trainer's devices: rollout and teacher workers live in the trainer's placement-group
    # bundles and sleep (vLLM sleep mode; hf: weights to host memory) while the others work
    # (posttrain.stages.opd.colocate). Their gpus_per_worker are then ignored; with vLLM, each engine's
    # gpu_memory_utilization must fit beside the trainer's resident weights and optimizer state.
    colocate: bool = False
    # 0: on-policy, every step samples from the weights the previous step produced. 1: one step
    # off-policy (slime's --async, verl's one-step-off-policy): step t+1's samples and teacher scores
    # are made while step t trains, from weights one step older; the clipped importance ratio of the
    # loss corrects for the lag (posttrain.stages.opd.ahead). Checkpoint, eval and teacher-switch steps
    # drain the pipeline, so a resumed run still matches an uninterrupted one exactly.
    async_steps: int = one_of(0, 0, 1)
    # A worker that dies is restarted (by Ray), given the current weights, and its work redone; after
    # this many deaths in a run, the run stops with a checkpoint to resume from.
    max_restarts: int = non_negative(3)


@dataclass
class TeacherConfig:
    backend: str = "hf"  # as rollout.backend
    num_workers: int = positive(1)
    cpus_per_worker: float = 1
    threads_per_worker: int = non_negative(0)  # as trainer.threads_per_worker
    gpus_per_worker: int = 0
    placement: str = one_of("PACK", *PLACEMENT_STRATEGIES)  # as trainer.placement
    batch_size: int = 16  # sequences per padded batch (hf; teachers that cannot be packed, e.g. qwen3_next)
    pack_tokens: int = positive(4096)  # tokens per packed row (hf; attention-only teachers, e.g. qwen3_moe)
    dtype: str = one_of("float32", "float32", "bfloat16")
    gpu_memory_utilization: float = 0.5  # vllm
    max_restarts: int = non_negative(3)  # as rollout.max_restarts, per teacher group


@dataclass
class LossConfig:
    # A loss by name (posttrain.losses.LOSSES; the estimators and what each costs: posttrain.losses.reverse_kl
    # and .jsd): topk_jsd (the default: the best measured, docs/distillation_quality.md) — GKD's generalized
    # JSD over the teacher's top-k (+ a tail bucket), `beta` from the forward KL (0, the default) to the reverse
    # KL (1); sampled — the sampled token's reverse KL as an advantage (the card's recipe); topk — the reverse KL
    # over the top-k and the bucket, exactly; topk_sampled — the top-k terms exactly and the sampled token's term
    # beyond them (an unbiased estimate of the full reverse KL's gradient).
    mode: str = "topk_jsd"
    kl_coef: float = 1.0
    clip_ratio: float = 0.2  # importance-ratio clip (PPO-style), against sampler/trainer mismatch
    # The teacher's top-k returned per response token: the target of the topk modes (k >= the vocabulary:
    # the teacher's full distribution), and for sampled mode the `reverse_kl_topk` metric; 0: none (sampled only).
    topk: int = non_negative(20)
    # topk_jsd only, TRL's GKD convention: 0 the forward KL (the measured best), 0.5 the JSD (TRL's default), 1 the
    # reverse KL (= topk).
    beta: float = unit_interval(0.0)
    # The sampled-token advantage, over the global batch (posttrain.losses.advantages): a baseline
    # (none | batch_mean | prompt_mean: leave-one-out over the prompt's other samples), a division by
    # the batch's standard deviation, and a clamp of |A| (0: off).
    baseline: str = one_of("none", "none", "batch_mean", "prompt_mean")
    normalize_advantages: bool = False
    advantage_clip: float = non_negative(0.0)


@dataclass
class EvalConfig:
    every: int = 0  # OPD steps between evaluations of the current student (0: off); also after the last step
    tasks: list[str] = field(default_factory=lambda: ["addition", "repeat"])  # posttrain.eval.tasks
    limit: int = 64  # eval-split examples per task
    max_new_tokens: int = 32


@dataclass
class OPDConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    teachers: list[TeacherStage] = field(default_factory=list)
    data: OPDDataConfig = field(default_factory=OPDDataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-6, schedule="constant"))
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(router_aux_loss_coef=0.0, freeze_router=True))
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    output_dir: str = "runs/opd"


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None):
    """Read `path` (YAML, with its `base:` chain), apply `key=value` overrides, and build a `cls` dataclass."""
    raw: dict = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        raw = read_config_yaml(path)
    for item in overrides or []:
        apply_override(raw, item)
    cfg = _build(cls, raw, prefix="", where=where)
    _check_values(cfg, where)
    return cfg


def read_config_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file as a dict. `base: other.yaml` (relative to the file) makes it a variant: the base file's
    values, with this file's keys merged over them section by section; so a variant says only what differs."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}" + (f" (the base of {_seen[-1]})" if _seen else "")) from None
    raw = strict_yaml(text, path, ConfigError)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be the path of another config file, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in _seen or base_path == path.resolve():
        raise ConfigError(f"{path}: 'base: {base}' leads back to itself")
    return _merge(read_config_yaml(base_path, (*_seen, path.resolve())), raw)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice: line {seen[key] + 1} and line {key_node.start_mark.line + 1}",
                    key_node.start_mark)
            seen.setdefault(key, key_node.start_mark.line)
        return super().construct_mapping(node, deep=deep)


def strict_yaml(text: str, path, error: type[Exception]):
    """`text` (from `path`) parsed as YAML, with a duplicate key or a syntax error raised as `error` naming the lines."""
    try:
        return yaml.load(text, Loader=_StrictLoader) or {}
    except yaml.constructor.ConstructorError as e:
        raise error(f"{path}: {e.problem}") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_override(raw: dict, item: str) -> None:
    """Set `a.b.c=value` in the nested dict; the value is parsed as YAML (so 2, true, null, [1,2])."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. trainer.num_workers=2")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError:
        node[parts[-1]] = value


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _build(cls: type, raw: Any, prefix: str, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"{where}: unknown key '{prefix}{key}'{hint} (valid keys: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = prefix + name
        section = dataclasses.is_dataclass(hints[name])
        if section:
            # A stage may default a section differently (OPD: constant lr 1e-6, frozen router);
            # the YAML's keys then apply on top of that default, not of the class's own.
            base = {}
            if f.default_factory not in (dataclasses.MISSING, hints[name]):
                base = dataclasses.asdict(f.default_factory())
            given = raw.get(name) or {}
            if not isinstance(given, dict):
                raise ConfigError(f"{where}: '{key}' expected a mapping, got {given!r}")
            values[name] = _build(hints[name], {**base, **given}, key + ".", where)
        elif name in raw:
            values[name] = _convert(hints[name], raw[name], key, where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required value '{key}'")
    return cls(**values)


def _convert(tp, value, key: str, where: str):
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key + ".", where)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, key, where)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: '{key}' expected a list, got {value!r}")
        return [_convert(item_tp, v, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' expected a mapping, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config type {tp} for {key}")
    raise ConfigError(f"{where}: '{key}' expected {tp.__name__}, got {type(value).__name__} {value!r}")


def _check_values(cfg, where: str) -> None:
    """The checks declared with the fields (`one_of`, `positive`, `non_negative`), over the whole tree."""
    for key, value, meta in _walk(cfg, ""):
        if "choices" in meta and value not in meta["choices"]:
            raise ConfigError(f"{where}: '{key}' must be one of {list(meta['choices'])}, got {value!r}")
        if meta.get("positive") and not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{where}: {key} must be > 0, got {value!r}".replace(key, _quoted(key), 1))
        if meta.get("non_negative") and value < 0:
            raise ConfigError(f"{where}: '{key}' must be >= 0, got {value!r}")
        if meta.get("unit_interval") and not 0 <= value <= 1:
            raise ConfigError(f"{where}: '{key}' must be in [0, 1], got {value!r}")
    if hasattr(cfg, "output_dir"):
        cfg.output_dir = check_output_dir(cfg.output_dir, where)
    _check_levers(cfg, where)
    _check_sampling(cfg, where)


def _walk(node, prefix: str, label: str = ""):
    """(dotted key, value, field metadata) of every field under `node`, lists of sections included;
    a list item with a `path` (a cascade stage) carries it in its key's label: `'teachers[1].steps' (u)`."""
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            yield from _walk(value, key + ".")
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                yield from _walk(item, f"{key}[{i}].", f" ({item.path})" if hasattr(item, "path") else "")
        else:
            yield key + label, value, f.metadata


def _quoted(key: str) -> str:
    """`'a.b'`, or `'teachers[1].steps' (u)` for a labelled key."""
    name, _, label = key.partition(" ")
    return f"'{name}'" + (f" {label}" if label else "")


def _check_levers(cfg, where: str) -> None:
    """The memory levers' combinations that cannot work, named before any worker starts."""
    ds, lora = getattr(cfg, "deepspeed", None), getattr(cfg, "lora", None)
    if ds is not None and ds.offload_params != "none" and ds.zero_stage != 3:
        raise ConfigError(f"{where}: 'deepspeed.offload_params: {ds.offload_params}' needs 'deepspeed.zero_stage: 3' "
                          f"(ZeRO-2 keeps whole parameters on every device), got zero_stage {ds.zero_stage}")
    if ds is not None and ds.offload_optimizer != "none" and ds.zero_stage == 0:
        raise ConfigError(f"{where}: 'deepspeed.offload_optimizer: {ds.offload_optimizer}' needs ZeRO "
                          "('deepspeed.zero_stage: 2' or 3), got zero_stage 0")
    rollout = getattr(cfg, "rollout", None)
    if rollout is not None and rollout.colocate and rollout.async_steps:
        raise ConfigError(f"{where}: 'rollout.async_steps: {rollout.async_steps}' overlaps sampling with training, but "
                          "'rollout.colocate' makes them take turns on shared devices; drop one of them")
    if rollout is not None and rollout.colocate:
        for group in ("rollout", "teacher"):
            count = getattr(cfg, group).num_workers
            if count > cfg.trainer.num_workers:
                raise ConfigError(f"{where}: 'rollout.colocate' puts the {group} workers in the trainer's bundles, one per "
                                  f"device: '{group}.num_workers' ({count}) must be <= 'trainer.num_workers' "
                                  f"({cfg.trainer.num_workers})")
    if lora is not None and lora.enabled:
        if not 0 <= lora.dropout < 1:
            raise ConfigError(f"{where}: 'lora.dropout' must be in [0, 1), got {lora.dropout!r}")
        if not lora.target_modules and not lora.target_parameters:
            raise ConfigError(f"{where}: 'lora.target_modules' and 'lora.target_parameters' are both empty: "
                              "nothing would train")
        router = [t for t in lora.target_parameters if t.endswith("gate.weight")]
        if router and getattr(cfg.trainer, "freeze_router", False):
            raise ConfigError(f"{where}: 'lora.target_parameters' adapts the router ({router[0]}) but "
                              "'trainer.freeze_router' is true; drop one of them")


def _check_sampling(cfg, where: str) -> None:
    """OPD's sampler must draw from the distribution the trainer scores: the student's plain softmax.

    The loss's importance ratio is exp(log π_train − log π_sampler) with log π_train from the trainer's
    temperature-1 softmax, and the advantage and the logged `reverse_kl` are log π_sampler − log π_teacher,
    the reverse KL of the student as it is exported. A tempered or truncated sampler breaks all three
    (measured, tiny suite: temperature 0.7 gave ratios 0.45–18.7 and clipped 25% of the tokens at step 1;
    top_p 0.9 a ratio of 0.90 on every token), so such a config is refused rather than silently wrong.
    """
    rollout = getattr(cfg, "rollout", None)
    if rollout is None:
        return
    why = ("OPD trains the student's own distribution: the loss's importance ratio compares the trainer's plain "
           "softmax with the sampler's log-probs, and the advantage and the logged reverse_kl are "
           "log π_sampler − log π_teacher, the reverse KL of the student as exported, only when the sampler draws "
           "from that same distribution")
    if rollout.temperature != 1.0:
        raise ConfigError(f"{where}: 'rollout.temperature' must be 1.0 for OPD, got {rollout.temperature!r}: {why}; "
                          f"at temperature {rollout.temperature} the sampler draws from another one (ratios off on "
                          "every token, the logged KL that of a tempered student). The card's recipe samples at 1.0")
    if rollout.top_p != 1.0:
        raise ConfigError(f"{where}: 'rollout.top_p' must be 1.0 for OPD, got {rollout.top_p!r}: {why}; top-p "
                          "truncates the sampler's distribution to a nucleus the trainer does not see (every ratio "
                          "off by the nucleus' mass). The card's recipe samples with top_p 1.0")


def check_output_dir(output_dir: str, where: str = "config") -> str:
    """`output_dir` must be a filesystem path (on a cluster: one every node sees, e.g. NFS or a
    FUSE-mounted bucket). A URI such as s3://... is refused here, before any work: checkpoints are
    written by DeepSpeed and renamed into place, which needs a POSIX filesystem, not an object store."""
    from urllib.parse import urlparse

    scheme = urlparse(str(output_dir)).scheme
    if scheme and scheme != "file" and len(scheme) > 1:  # len 1: a Windows drive letter
        raise ConfigError(
            f"{where}: 'output_dir' {output_dir!r}: {scheme}:// URIs are not supported; give a path on a filesystem "
            "that every node mounts (e.g. /mnt/shared/runs/x, or the bucket mounted with s3fs/gcsfuse)"
        )
    return urlparse(output_dir).path if scheme == "file" else output_dir
