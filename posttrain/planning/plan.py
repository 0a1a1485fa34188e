"""`posttrain plan`: what a config needs, per GPU and in time, before a GPU-hour is spent.

Memory is counted per GPU, term by term, from the model's shapes (meta-device configs, no
weights) and the config's batch, lengths, ZeRO stage and levers; time from FLOP and byte counts
divided by throughput constants. Every constant says where it comes from: a datasheet ("spec"),
the model card's own run ("card"), or a stated guess ("assumed"). docs/scaling.md explains the
formulas and the calibration.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from posttrain.config import ConfigError, LoRAConfig, OPDConfig, SFTConfig, load_config, read_config_yaml
from posttrain.engines.sizing import EngineSize, prompt_logprob_peak_bytes, rollout_size, teacher_size
from posttrain.infra.paths import resolve_path
from posttrain.models.architectures import HUB_IDS, KNOWN, architecture_config
from posttrain.models.params import count_parameters, train_flops_per_token
from posttrain.planning.levers import colocated_peak, training_memory
from posttrain.planning.run_length import sft_steps

GiB = 1024**3


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    peak_bf16_flops: float  # dense
    hbm_bytes_per_s: float
    source: str


GPUS = {
    "h100": GPU("H100 SXM 80GB", 80, 989e12, 3.35e12, "spec: NVIDIA H100 SXM datasheet (dense bf16, HBM3)"),
    "h200": GPU("H200 SXM 141GB", 141, 989e12, 4.8e12, "spec: NVIDIA H200 datasheet"),
    "a100-80g": GPU("A100 SXM 80GB", 80, 312e12, 2.04e12, "spec: NVIDIA A100 datasheet"),
    "a100-40g": GPU("A100 SXM 40GB", 40, 312e12, 1.56e12, "spec: NVIDIA A100 datasheet"),
    "l40s": GPU("L40S 48GB", 48, 362e12, 0.864e12, "spec: NVIDIA L40S datasheet (dense bf16)"),
}


@dataclass(frozen=True)
class Constant:
    value: float
    source: str  # "card: ...", "spec: ...", "default: ..." or "assumed: ..."


# The card's SFT run: ~4,000 steps x 512 sequences x 8,192 tokens in ~24 h on 64 GPUs.
CARD = {"sft_hours": 24.0, "sft_steps": 4000, "sft_batch": 512, "sft_seq": 8192, "opd_hours": 110.0,
        "opd_steps": 3800, "gpus": 64}
CARD_SFT_TOKENS_PER_S_PER_GPU = CARD["sft_steps"] * CARD["sft_batch"] * CARD["sft_seq"] / (CARD["sft_hours"] * 3600 * CARD["gpus"])

CONSTANTS = {
    # Calibrated, not guessed: set by `calibrate()` from the card's SFT figure (GPU kind H100 assumed).
    "train_mfu": Constant(0.0, "card: SFT ~4,000 x 512 x 8,192 tokens in ~24 h on 64 GPUs = "
                               f"{CARD_SFT_TOKENS_PER_S_PER_GPU:,.0f} tokens/s/GPU; MFU = that x FLOPs/token / H100 peak "
                               "(that the card's GPUs were H100s is assumed)"),
    "prefill_mfu": Constant(0.25, "assumed: vLLM prefill of a top-8 MoE (fused MoE kernels, large batches)"),
    "decode_bandwidth_efficiency": Constant(0.5, "assumed: share of HBM bandwidth a vLLM decode step achieves"),
    "decode_step_floor_s": Constant(0.008, "assumed: per-step latency floor of vLLM decode (launches, sampling, "
                                           "scheduling) for a 28-48 layer model with CUDA graphs"),
    # The weight sync as the code runs it (posttrain.train.weight_stream): per bucket, in turn, ZeRO-3
    # gathers a module onto rank 0's GPU, copies it to the host into a /dev/shm bucket, Ray's object store
    # moves the bucket to each other node holding engines, a relay there copies it into that node's
    # /dev/shm, and every engine loads it to its GPU.
    "sync_gather_bytes_per_s": Constant(50e9, "assumed: ZeRO-3 all-gather of one module into rank 0 (NVLink/IB)"),
    "sync_pcie_bytes_per_s": Constant(25e9, "assumed: device<->host copy, about half of PCIe Gen5 x16"),
    "sync_memcpy_bytes_per_s": Constant(10e9, "assumed: host memcpy into fresh /dev/shm pages (one thread)"),
    "sync_object_store_bytes_per_s": Constant(5e9, "assumed: Ray object transfer to one other node (TCP, ~40 Gb/s)"),
    "sync_nccl_bytes_per_s": Constant(20e9, "assumed: vLLM's packed NCCL broadcast, trainer rank 0 -> every engine "
                                            "(rollout.weight_transfer: nccl)"),
    "mean_prompt_frac": Constant(0.25, "assumed: mean prompt = 25% of data.max_prompt_len"),
    "mean_response_frac": Constant(0.25, "assumed: mean response = 25% of rollout.max_new_tokens "
                                         "(the longest response still sets the rollout's tail)"),
    "framework_gib": Constant(5.0, "assumed: CUDA context, NCCL buffers and allocator fragmentation per GPU"),
    "vllm_runtime_gib": Constant(3.0, "assumed: vLLM activations, CUDA graphs and sampler buffers per GPU"),
    "zero_reduce_bucket": Constant(5e8, "default: DeepSpeed reduce_bucket_size (elements)"),
    "zero2_allgather_bucket": Constant(5e8, "default: DeepSpeed allgather_bucket_size (elements)"),
}


# --------------------------------------------------------------------------------------------------
# Model shapes
# --------------------------------------------------------------------------------------------------


@dataclass
class Shape:
    name: str
    total: int
    active: int
    expert: int
    layers: int
    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    num_experts: int
    top_k: int
    expert_dim: int
    full_attention_layers: int  # layers with a KV cache (all, except Qwen3-Next's linear-attention ones)
    linear_state_bytes: int  # per sequence: Qwen3-Next's recurrent + conv states (bf16)
    largest_layer: int  # parameters of the largest decoder layer (ZeRO-3 gathers an MoE block whole)
    tied: bool
    config: object = field(repr=False, default=None)


def resolve_shape(path: str, architecture: str = "", trust_remote_code: bool = False) -> Shape:
    """The shapes of a model named by architecture, hub id (posttrain.models.architectures) or local path."""
    from transformers import AutoConfig

    name = architecture or HUB_IDS.get(path, "")
    if name:
        if name not in KNOWN:
            raise ConfigError(f"model.architecture: unknown architecture {name!r}; known: {sorted(KNOWN)}")
        return known_shape(name)
    if Path(path).exists():
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    else:
        raise ConfigError(f"plan: {path} is neither a local model nor a known hub id ({sorted(HUB_IDS)}); set "
                          "model.architecture or add it to posttrain/models/architectures.py")
    return shape_of(config, name or Path(path).name)


@functools.lru_cache(maxsize=None)
def known_shape(name: str) -> Shape:
    return shape_of(architecture_config(name), name)


def shape_of(config, name: str) -> Shape:
    import torch
    from transformers import AutoModelForCausalLM

    counts = count_parameters(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layers = model.model.layers
    largest = max(sum(p.numel() for p in layer.parameters()) for layer in layers)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    linear_layers = sum(t == "linear_attention" for t in layer_types)
    linear_state = 0
    if linear_layers:  # gated DeltaNet: a [v_heads, k_dim, v_dim] state and a short conv state per layer
        conv_dim = 2 * config.linear_num_key_heads * config.linear_key_head_dim + \
            config.linear_num_value_heads * config.linear_value_head_dim
        linear_state = linear_layers * 2 * (config.linear_num_value_heads * config.linear_key_head_dim
                                            * config.linear_value_head_dim + conv_dim * config.linear_conv_kernel_dim)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return Shape(
        name=name, total=counts["total"], active=counts["active"], expert=counts["expert"],
        layers=config.num_hidden_layers, hidden=config.hidden_size, q_heads=config.num_attention_heads,
        kv_heads=config.num_key_value_heads, head_dim=head_dim, vocab=config.vocab_size,
        num_experts=getattr(config, "num_experts", 0) or 0, top_k=getattr(config, "num_experts_per_tok", 0) or 0,
        expert_dim=getattr(config, "moe_intermediate_size", 0) or config.intermediate_size,
        full_attention_layers=config.num_hidden_layers - linear_layers, linear_state_bytes=linear_state,
        largest_layer=largest, tied=bool(config.tie_word_embeddings), config=config,
    )


def forward_flops_per_token(shape: Shape, seq_len: int) -> float:
    """A forward pass is a third of forward + backward (2 x active + attention scores/values)."""
    return train_flops_per_token(shape.config, seq_len) / 3


# --------------------------------------------------------------------------------------------------
# Memory levers and formulas (bytes per GPU)
# --------------------------------------------------------------------------------------------------


@dataclass
class Levers:
    zero_stage: int = 3
    bf16: bool = True
    activation_checkpointing: bool = False
    offload_optimizer: bool = False  # ZeRO-Offload: fp32 master + Adam moments in CPU memory
    offload_params: bool = False  # ZeRO-3 parameter offload: the bf16 shard in CPU memory
    lora_rank: int | None = None  # None: full fine-tuning
    lora_targets: tuple = ("q_proj", "k_proj", "v_proj", "o_proj")
    colocated: bool = False  # trainer, rollout and teacher share every GPU
    loss_chunk_tokens: int = 512  # trainer.loss_chunk_tokens: the chunked loss's target positions per chunk


def _on(value) -> bool:
    """A lever's switch: booleans, or DeepSpeed-style device strings ("none" | "cpu")."""
    return value not in (None, False, "", "none")


def levers_from_config(cfg) -> Levers:
    """The levers as the config sets them (posttrain.config: lora.*, trainer.activation_checkpointing,
    deepspeed.offload_optimizer / offload_params, rollout.colocate; getattr defaults keep older configs)."""
    ds, lora = cfg.deepspeed, getattr(cfg, "lora", None)
    extra_zero = (getattr(ds, "extra", {}) or {}).get("zero_optimization", {})
    return Levers(
        zero_stage=ds.zero_stage,
        bf16=bool(ds.bf16),
        activation_checkpointing=bool(getattr(cfg.trainer, "activation_checkpointing", False)),
        offload_optimizer=_on(getattr(ds, "offload_optimizer", None)) or "offload_optimizer" in extra_zero,
        offload_params=_on(getattr(ds, "offload_params", None)) or "offload_param" in extra_zero,
        lora_rank=lora.rank if lora is not None and lora.enabled else None,
        lora_targets=tuple(lora.target_modules) if lora is not None else Levers.lora_targets,
        colocated=bool(getattr(getattr(cfg, "rollout", None), "colocate", False)),
        loss_chunk_tokens=getattr(cfg.trainer, "loss_chunk_tokens", Levers.loss_chunk_tokens),
    )


def trainer_memory(shape: Shape, gpus: int, micro_tokens: int, lv: Levers) -> dict[str, float]:
    """Bytes per trainer GPU, term by term: `posttrain.planning.levers.training_memory` (weights, gradients,
    optimizer, activations, the chunked loss under ZeRO and the levers: the one memory formula of the project),
    plus what it leaves out: DeepSpeed's communication buffers and the framework's share."""

    lora = LoRAConfig(enabled=True, rank=lv.lora_rank, target_modules=list(lv.lora_targets)) if lv.lora_rank else None
    mem = training_memory(shape.config, num_devices=gpus, zero_stage=lv.zero_stage, bf16=lv.bf16,
                          tokens_per_micro_batch=micro_tokens, lora=lora,
                          activation_checkpointing=lv.activation_checkpointing,
                          offload_optimizer=lv.offload_optimizer, offload_params=lv.offload_params and lv.zero_stage == 3,
                          loss_chunk_tokens=lv.loss_chunk_tokens)
    w = 2 if lv.bf16 else 4
    reduce = 2 * CONSTANTS["zero_reduce_bucket"].value
    if lv.zero_stage == 3:  # the current and the prefetched layer, gathered whole (the MoE block is a leaf)
        buffers = reduce + 2 * w * shape.largest_layer
    else:
        buffers = reduce + 2 * CONSTANTS["zero2_allgather_bucket"].value
    return {"weights": mem["weights"], "gradients": mem["gradients"], "optimizer": mem["optimizer"],
            "activations": mem["activations"], "loss": mem["loss"], "buffers": buffers,
            "framework": CONSTANTS["framework_gib"].value * GiB, "cpu_offloaded": mem["host"]}


def kv_bytes_per_token(shape: Shape, tp: int = 1) -> float:
    return 2 * shape.full_attention_layers * shape.kv_heads * shape.head_dim * 2 / tp


def inference_memory(shape: Shape, tp: int, seqs: int, tokens_per_seq: int, mean_tokens: int,
                     utilization: float, capacity: float, logprob_peak: float = 0.0) -> dict[str, float]:
    """One vLLM engine over `tp` GPUs: bf16 weights / tp, runtime, and the KV cache its sequences need.
    `logprob_peak`: a teacher's prompt log-probs (`engines.sizing.prompt_logprob_peak_bytes`), on every GPU and
    outside vLLM's profile: the engine starts with its utilization lowered by it, so the KV budget shrinks."""
    weights = 2 * shape.total / tp
    runtime = CONSTANTS["vllm_runtime_gib"].value * GiB
    per_seq = tokens_per_seq * kv_bytes_per_token(shape, tp) + shape.linear_state_bytes / tp
    per_mean_seq = mean_tokens * kv_bytes_per_token(shape, tp) + shape.linear_state_bytes / tp
    budget = utilization * capacity - logprob_peak - weights - runtime
    return {"weights": weights, "runtime": runtime, "prompt_logprobs_peak": logprob_peak,
            "kv_all_sequences": seqs * per_mean_seq, "kv_one_longest": per_seq, "kv_budget": budget,
            "max_concurrent": max(0, int(budget // per_mean_seq)) if per_mean_seq else seqs}


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------


def calibrate(gpu: GPU) -> None:
    """train_mfu from the card's SFT: Marco-Mini, 8,192-token sequences, H100 peak (assumed)."""
    marco = known_shape("marco_mini")
    flops = train_flops_per_token(marco.config, CARD["sft_seq"])
    mfu = CARD_SFT_TOKENS_PER_S_PER_GPU * flops / GPUS["h100"].peak_bf16_flops
    CONSTANTS["train_mfu"] = Constant(mfu, CONSTANTS["train_mfu"].source)


def plan(cfg, gpus: int, gpu: GPU, levers: dict | None = None) -> dict:
    """The plan of `cfg` on `gpus` GPUs of kind `gpu`; `levers` overrides what the config says."""
    calibrate(gpu)
    lv = levers_from_config(cfg)
    for key, value in (levers or {}).items():
        setattr(lv, key, value)
    opd = hasattr(cfg, "teachers")
    student = resolve_shape(cfg.model.path, cfg.model.architecture, cfg.model.trust_remote_code)
    capacity = gpu.memory_gib * GiB
    split = _split(cfg, gpus, lv.colocated, opd)
    tm = trainer_memory(student, split["trainer"], cfg.data.pack_tokens, lv)
    groups = [_group("trainer", student.name, split["trainer"], tm, capacity,
                     ("weights", "gradients", "optimizer", "activations", "loss", "buffers", "framework"))]
    train_flops_factor = 8 / 6 if lv.activation_checkpointing else 1.0  # one more forward
    if opd:
        inference, time = _opd_plan(cfg, student, gpu, split, lv.colocated, capacity, train_flops_factor)
        groups += inference
        # The weight sync streams the weights to the rollout engines one bucket at a time (ZeRO-3 gathers
        # one layer at a time on the GPU, within `buffers`): its host memory is one bucket on rank 0.
        groups[0]["note"] = (f"rank 0 holds one weight-sync bucket of {cfg.rollout.sync_bucket_mb} MB "
                             "(rollout.sync_bucket_mb) in host memory while the weights stream to the rollout engines")
    else:
        time = _sft_time(cfg, student, gpu, split["trainer"], train_flops_factor)
    if lv.colocated:
        groups.append(_colocated_group(groups, capacity))
    constants = {k: {"value": c.value, "source": c.source} for k, c in CONSTANTS.items()}
    constants["gpu"] = {"value": gpu.memory_gib, "source": gpu.source}
    return {"config": {"gpus": gpus, "gpu": gpu.name, "stage": "opd" if opd else "sft", "student": student.name,
                       "levers": asdict(lv), "split": split},
            "groups": groups, "time": time, "constants": constants}


def _split(cfg, gpus: int, colocated: bool, opd: bool) -> dict[str, int]:
    """GPUs per group: the config's, scaled to `gpus` keeping its proportions and adding up to it exactly
    (colocated: all of them each); an inference group smaller than one engine's tensor parallel size is refused."""
    trainer_gpus = cfg.trainer.num_workers * max(1, cfg.trainer.gpus_per_worker)
    rollout_gpus = teacher_gpus = 0
    if opd:
        rollout_gpus = cfg.rollout.num_workers * max(1, cfg.rollout.gpus_per_worker)
        teacher_gpus = cfg.teacher.num_workers * max(1, cfg.teacher.gpus_per_worker)
    split = {"trainer": trainer_gpus, "rollout": rollout_gpus, "teacher": teacher_gpus}
    if colocated:  # every group spans the whole allocation
        return {"trainer": gpus, "rollout": gpus if opd else 0, "teacher": gpus if opd else 0}
    if not opd:
        return {"trainer": gpus, "rollout": 0, "teacher": 0}
    if sum(split.values()) != gpus:
        if gpus < 3:
            raise ConfigError(f"--gpus {gpus}: OPD's three groups (trainer, rollout, teacher) need a GPU each, so at least 3 "
                              "(or --colocate: all three on the same GPUs)")
        split = _share(split, gpus)
    for name in ("rollout", "teacher"):
        tp = getattr(cfg, name).gpus_per_worker
        if tp > 1 and split[name] < tp:
            raise ConfigError(f"--gpus {gpus}: the {name} group gets {split[name]} GPU(s), fewer than one engine's tensor "
                              f"parallel size ({name}.gpus_per_worker = {tp}); give more GPUs or a smaller "
                              f"{name}.gpus_per_worker")
    return split


def _share(wanted: dict[str, int], gpus: int) -> dict[str, int]:
    """`gpus` split in the config's proportions, each group at least 1, adding up exactly (largest remainder)."""
    total = sum(wanted.values())
    spare = gpus - len(wanted)
    exact = {k: spare * v / total for k, v in wanted.items()}
    share = {k: 1 + int(x) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - int(exact[k]), reverse=True)[:gpus - sum(share.values())]:
        share[k] += 1
    return share


def _sync_time(cfg, student: Shape, split: dict, zero_stage: int, colocated: bool) -> tuple[float, str]:
    """The weight sync as posttrain.train.weight_stream runs it for `rollout.weight_transfer`. shm: bucket after
    bucket, nothing overlapped: (ZeRO-3 gather) + device->host into a /dev/shm bucket + per other node
    holding engines, the object store's transfer + its relay's copy, then the engines' host->device loads
    (all engines at once). nccl: (ZeRO-3 gather) + one broadcast to every engine."""
    c = {k: CONSTANTS[k].value for k in ("sync_gather_bytes_per_s", "sync_pcie_bytes_per_s", "sync_memcpy_bytes_per_s",
                                         "sync_object_store_bytes_per_s", "sync_nccl_bytes_per_s")}
    nbytes = 2 * student.total  # bf16
    gather = nbytes / c["sync_gather_bytes_per_s"] if zero_stage == 3 else 0.0
    if cfg.rollout.weight_transfer == "nccl":
        return gather + nbytes / c["sync_nccl_bytes_per_s"], (
            f"{nbytes / 1e9:.1f} GB of bf16 weights: ZeRO-3 gather {gather:.1f} s + vLLM's NCCL broadcast "
            f"{nbytes / c['sync_nccl_bytes_per_s']:.1f} s")
    per_node = max(1, cfg.cluster.gpus_per_node)
    # Disaggregated, the engines sit on nodes of their own (rank 0 is on a trainer node); colocated, on all.
    other_nodes = math.ceil(split["trainer"] / per_node) - 1 if colocated else math.ceil(split["rollout"] / per_node)
    terms = {"ZeRO-3 gather": gather,
             "to host /dev/shm": nbytes / c["sync_pcie_bytes_per_s"] + nbytes / c["sync_memcpy_bytes_per_s"],
             f"object store to {other_nodes} node(s) + relay copy": other_nodes * nbytes / c["sync_object_store_bytes_per_s"]
             + (nbytes / c["sync_memcpy_bytes_per_s"] if other_nodes else 0.0),
             "engines load": nbytes / c["sync_pcie_bytes_per_s"]}
    how = (f"{nbytes / 1e9:.1f} GB of bf16 weights in {cfg.rollout.sync_bucket_mb} MB /dev/shm buckets: "
           + ", ".join(f"{k} {v:.1f} s" for k, v in terms.items() if v))
    return sum(terms.values()), how


def _opd_plan(cfg, student: Shape, gpu: GPU, split: dict, colocated: bool, capacity: float,
              train_flops_factor: float) -> tuple[list[dict], dict]:
    """The rollout and teacher groups' memory, and the time of an OPD step by phase."""
    trainer_gpus, rollout_gpus, teacher_gpus = split["trainer"], split["rollout"], split["teacher"]
    seqs = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    mean_prompt = round(CONSTANTS["mean_prompt_frac"].value * cfg.data.max_prompt_len)
    mean_resp = round(CONSTANTS["mean_response_frac"].value * cfg.rollout.max_new_tokens)
    longest = cfg.data.max_prompt_len + cfg.rollout.max_new_tokens
    mean_len = mean_prompt + mean_resp
    train_tokens = seqs * mean_len
    train_flops = train_flops_per_token(student.config, mean_len) * train_flops_factor
    train_s = train_tokens * train_flops / (trainer_gpus * gpu.peak_bf16_flops * CONSTANTS["train_mfu"].value)
    # rollout: one engine per rollout.gpus_per_worker GPUs (tensor parallel), sized as the engines are
    rollout_engine = rollout_size(cfg)
    tp = rollout_engine.tensor_parallel
    per_engine = math.ceil(seqs / max(1, rollout_gpus // tp))
    rm = inference_memory(student, tp, per_engine, rollout_engine.max_model_len, mean_prompt + mean_resp // 2,
                          cfg.rollout.gpu_memory_utilization, capacity)
    groups = [_inference_group("rollout", student, rollout_gpus, rollout_engine, rm, capacity,
                               cfg.rollout.gpu_memory_utilization, colocated)]
    rollout_s, rollout_note = _rollout_time(student, gpu, tp, per_engine, rm["max_concurrent"], mean_prompt, mean_resp,
                                            cfg.rollout.max_new_tokens)
    teacher_s_by_stage = []
    for i, stage in enumerate(cfg.teachers):
        shape = resolve_shape(stage.path, trust_remote_code=cfg.model.trust_remote_code)
        teacher_engine = teacher_size(cfg)
        ttp = teacher_engine.tensor_parallel
        tm_i = inference_memory(shape, ttp, math.ceil(seqs / max(1, teacher_gpus // ttp)), teacher_engine.max_model_len,
                                longest, cfg.teacher.gpu_memory_utilization, capacity,
                                logprob_peak=prompt_logprob_peak_bytes(teacher_engine, shape.vocab))
        groups.append(_inference_group(f"teacher {i + 1}", shape, teacher_gpus, teacher_engine, tm_i, capacity,
                                       cfg.teacher.gpu_memory_utilization, colocated))
        flops = seqs * mean_len * forward_flops_per_token(shape, mean_len)
        teacher_s_by_stage.append((stage.steps, flops / (teacher_gpus * gpu.peak_bf16_flops * CONSTANTS["prefill_mfu"].value)))
    sync_s, sync_how = _sync_time(cfg, student, split, cfg.deepspeed.zero_stage, colocated)
    steps = sum(s for s, _ in teacher_s_by_stage)
    mean_teacher_s = sum(s * t for s, t in teacher_s_by_stage) / max(1, steps)
    step_s = rollout_s + mean_teacher_s + train_s + sync_s
    return groups, {
        "phases": [
            {"phase": "rollout (decode)", "s": rollout_s, "how": rollout_note},
            {"phase": "teacher (prefill)", "s": mean_teacher_s,
             "how": f"{seqs} x {mean_len} tokens x 2 x active (+ attention) at prefill_mfu over {teacher_gpus} GPUs; "
                    + ", ".join(f"teacher {i + 1} {t:.1f} s" for i, (_, t) in enumerate(teacher_s_by_stage))},
            {"phase": "train", "s": train_s,
             "how": f"{train_tokens:,} tokens x {train_flops / 1e9:.2f} GFLOP/token at train_mfu over {trainer_gpus} GPUs"},
            {"phase": "weight sync", "s": sync_s, "how": sync_how},
        ],
        "step_s": step_s, "steps": steps, "total_h": step_s * steps / 3600,
        "card_step_s": CARD["opd_hours"] * 3600 / CARD["opd_steps"], "card_total_h": CARD["opd_hours"],
        "mean_prompt_tokens": mean_prompt, "mean_response_tokens": mean_resp,
    }


def _sft_time(cfg, student: Shape, gpu: GPU, trainer_gpus: int, train_flops_factor: float) -> dict:
    seq = cfg.data.max_seq_len
    tokens = cfg.trainer.global_batch_size * seq  # packed, padding-free: every slot a token (upper bound)
    flops = train_flops_per_token(student.config, seq) * train_flops_factor
    step_s = tokens * flops / (trainer_gpus * gpu.peak_bf16_flops * CONSTANTS["train_mfu"].value)
    length = sft_steps(cfg, fallback=CARD["sft_steps"])
    steps = length.steps
    return {
        "phases": [{"phase": "train", "s": step_s,
                    "how": f"{tokens:,} tokens x {flops / 1e9:.2f} GFLOP/token at train_mfu over {trainer_gpus} GPUs"}],
        "step_s": step_s, "steps": steps, "total_h": step_s * steps / 3600,
        "steps_source": length.source, "card_steps": CARD["sft_steps"],
        "card_step_s": CARD["sft_hours"] * 3600 / CARD["sft_steps"], "card_total_h": CARD["sft_hours"],
        "tokens_per_s_per_gpu": tokens / step_s / trainer_gpus,
    }


def _group(name: str, model: str, gpus: int, mem: dict, capacity: float, keys) -> dict:
    total = sum(mem[k] for k in keys)
    return {"group": name, "model": model, "gpus": gpus, "rows": {k: mem[k] for k in keys}, "total": total,
            "capacity": capacity, "fits": total <= capacity, "short": max(0.0, total - capacity),
            "cpu_offloaded": mem.get("cpu_offloaded", 0.0), "note": ""}


def _inference_group(name: str, shape: Shape, gpus: int, engine: EngineSize, mem: dict, capacity: float,
                     utilization: float, colocated: bool) -> dict:
    """Fits when the weights, the runtime and one longest sequence's KV fit in the engine's share."""
    usable, tp = utilization * capacity, engine.tensor_parallel
    rows = {"weights": mem["weights"], "runtime": mem["runtime"], "kv_one_longest": mem["kv_one_longest"]}
    if mem["prompt_logprobs_peak"]:  # a teacher's: inside the configured share, which the engine lowers by it
        rows["prompt_logprobs_peak"] = mem["prompt_logprobs_peak"]
    total = sum(rows.values())
    note = (f"KV for all its sequences at mean length: {mem['kv_all_sequences'] / GiB:.1f} GiB; "
            f"{mem['max_concurrent']} fit at once")
    if mem["prompt_logprobs_peak"]:
        note += (f"; prompt log-probs of {engine.max_num_batched_tokens:,} prefill tokens (teacher.max_num_batched_tokens): "
                 f"{mem['prompt_logprobs_peak'] / GiB:.1f} GiB outside vLLM's profile, so the engine starts at "
                 f"gpu_memory_utilization {utilization - mem['prompt_logprobs_peak'] / capacity:.3f}")
    if total > usable:
        # Tensor parallelism splits the weights, the KV heads and the logits; its size must divide the heads.
        need = math.ceil(total / usable * tp)
        need_tp = next(d for d in range(need, shape.q_heads + 1) if shape.q_heads % d == 0) if need <= shape.q_heads else need
        key = "rollout" if name == "rollout" else "teacher"
        note = (f"does not fit one engine of {tp} GPU(s): needs tensor parallel >= {need_tp} GPUs per engine "
                f"({key}.gpus_per_worker={need_tp}), or smaller weights (e.g. FP8); ") + note
    return {"group": name, "model": shape.name, "gpus": gpus, "rows": rows, "total": total, "capacity": usable,
            "fits": total <= usable, "short": max(0.0, total - usable), "cpu_offloaded": 0.0,
            "tensor_parallel": tp, "max_model_len": engine.max_model_len,
            "note": f"engines of tensor_parallel_size {tp}, max_model_len {engine.max_model_len:,}, "
                    f"gpu_memory_utilization {utilization}; " + note}


def _colocated_group(groups: list[dict], capacity: float) -> dict:
    """rollout.colocate: the groups take turns on each GPU, rollout and teacher sleeping while the trainer
    steps (posttrain.stages.opd.colocate); the peak is `posttrain.planning.levers.colocated_peak`, each vLLM engine
    holding its `gpu_memory_utilization` share while awake."""

    trainer = groups[0]["rows"]
    resident = {"weights": trainer["weights"], "gradients": trainer["gradients"], "optimizer": trainer["optimizer"],
                "total": groups[0]["total"]}
    engines = [g for g in groups if g["group"] != "trainer"]
    rollout = max((g["capacity"] for g in engines if g["group"] == "rollout"), default=0.0)
    teacher = max((g["capacity"] for g in engines if g["group"].startswith("teacher")), default=0.0)
    total = colocated_peak(resident, rollout, teacher)
    return {"group": "colocated (peak)", "model": "", "gpus": groups[0]["gpus"], "rows": {}, "total": total,
            "capacity": capacity, "fits": total <= capacity, "short": max(0.0, total - capacity), "cpu_offloaded": 0.0,
            "note": "max(trainer, trainer's resident weights + gradients + optimizer + an awake engine's "
                    "gpu_memory_utilization share)"}


def _rollout_time(shape: Shape, gpu: GPU, tp: int, seqs: int, max_concurrent: int, mean_prompt: int, mean_resp: int,
                  max_new: int) -> tuple[float, str]:
    """Decode is memory-bound: a step reads the experts its batch touches plus the KV cache.

    Continuous batching keeps `C` sequences in flight until the engine's work is done
    (seqs x mean_resp / C steps); the longest response (max_new_tokens) still runs to its end with
    few sequences left, at the per-step floor.
    """
    c = max(1, min(seqs, max_concurrent))
    bw = gpu.hbm_bytes_per_s * CONSTANTS["decode_bandwidth_efficiency"].value * tp
    touched = 1 - (1 - shape.top_k / shape.num_experts) ** (c * 1) if shape.num_experts else 1.0
    weight_bytes = 2 * ((shape.total - shape.expert) + shape.expert * touched)
    kv_bytes = c * (mean_prompt + mean_resp / 2) * kv_bytes_per_token(shape)
    floor = CONSTANTS["decode_step_floor_s"].value
    bulk_step = max(floor, (weight_bytes + kv_bytes) / bw)
    bulk_steps = math.ceil(seqs * mean_resp / c)
    tail_steps = max(0, max_new - bulk_steps)
    prefill = seqs * mean_prompt * forward_flops_per_token(shape, mean_prompt) / (
        tp * gpu.peak_bf16_flops * CONSTANTS["prefill_mfu"].value)
    total = bulk_steps * bulk_step + tail_steps * floor + prefill
    how = (f"{seqs} sequences per engine, {c} at once: {bulk_steps} steps x {bulk_step * 1e3:.1f} ms "
           f"(reads {weight_bytes / 1e9:.1f} GB weights + {kv_bytes / 1e9:.1f} GB KV) + tail to {max_new} tokens: "
           f"{tail_steps} x {floor * 1e3:.0f} ms")
    return total, how


# --------------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------------


def format_plan(p: dict) -> str:
    c = p["config"]
    lines = [f"posttrain plan: {c['stage']} of {c['student']} on {c['gpus']} x {c['gpu']} "
             f"(trainer {c['split']['trainer']}, rollout {c['split']['rollout']}, teacher {c['split']['teacher']} GPUs)",
             "levers: " + ", ".join(f"{k}={v}" for k, v in c["levers"].items() if k != "lora_targets"), "",
             "memory per GPU (GiB)"]
    keys = ["weights", "gradients", "optimizer", "activations", "loss", "buffers", "framework", "runtime",
            "prompt_logprobs_peak", "kv_one_longest"]
    heads = ["weights", "grads", "optim", "activ", "loss", "buffers", "framew", "runtime", "logp", "kv/seq"]
    width = max(len(g["group"]) + len(g["model"]) + 3 for g in p["groups"])
    lines.append(f"{'group':{width}s} {'GPUs':>4s} " + " ".join(f"{h:>7s}" for h in heads)
                 + f" {'total':>7s} {'of':>6s}  fits")
    for g in p["groups"]:
        label = f"{g['group']} ({g['model']})" if g["model"] else g["group"]
        cells = " ".join(f"{g['rows'][k] / GiB:7.1f}" if k in g["rows"] else f"{'-':>7s}" for k in keys)
        verdict = "yes" if g["fits"] else f"NO: short by {g['short'] / GiB:.1f} GiB"
        lines.append(f"{label:{width}s} {g['gpus']:4d} {cells} {g['total'] / GiB:7.1f} {g['capacity'] / GiB:6.1f}  {verdict}")
    for g in p["groups"]:
        if g["note"]:
            lines.append(f"  {g['group']}: {g['note']}")
        if g["cpu_offloaded"]:
            lines.append(f"  {g['group']}: {g['cpu_offloaded'] / GiB:.2f} GiB per rank in CPU memory (offload)")
    t = p["time"]
    lines += ["", "time per step"]
    for ph in t["phases"]:
        lines.append(f"  {ph['phase']:18s} {ph['s']:8.1f} s   {ph['how']}")
    lines.append(f"  {'step':18s} {t['step_s']:8.1f} s   (card: {t['card_step_s']:.1f} s)")
    lines.append(f"  {'total':18s} {t['total_h']:8.1f} h   for {t['steps']:,} steps (card: ~{t['card_total_h']:.0f} h on 64 GPUs)")
    if "steps_source" in t:
        lines.append(f"  {t['steps']:,} steps (card: ~{t['card_steps']:,}) from {t['steps_source']}")
        lines.append(f"  {t['tokens_per_s_per_gpu']:,.0f} tokens/s/GPU")
    if "mean_response_tokens" in t:
        lines.append(f"  mean prompt {t['mean_prompt_tokens']} / response {t['mean_response_tokens']} tokens (assumed)")
    verdicts = [g for g in p["groups"] if not g["fits"]]
    lines.append("")
    if verdicts:
        lines.append("does NOT fit: " + "; ".join(
            f"{g['group']} needs {g['total'] / GiB:.1f} GiB of {g['capacity'] / GiB:.1f} (short by {g['short'] / GiB:.1f} GiB)"
            for g in verdicts))
    else:
        lines.append(f"fits: every group within {c['gpu']}'s memory")
    lines += ["", "constants"]
    for name, const in p["constants"].items():
        lines.append(f"  {name:28s} {const['value']:<12.4g} {const['source']}")
    return "\n".join(lines)


def plan_command(config: str, gpus: int | None, gpu: str, overrides: list[str], gpu_memory_gb: float | None = None,
                 json_path: str | None = None, levers: dict | None = None) -> dict:
    path = resolve_path(config)
    raw = read_config_yaml(path)
    cfg = load_config(OPDConfig if "teachers" in raw else SFTConfig, path, overrides)
    if gpu not in GPUS:
        raise ConfigError(f"--gpu {gpu!r}: known GPUs are {', '.join(GPUS)}")
    kind = GPUS[gpu]
    if gpu_memory_gb:
        kind = GPU(f"{kind.name} ({gpu_memory_gb:g} GiB)", gpu_memory_gb, kind.peak_bf16_flops, kind.hbm_bytes_per_s,
                   "given: --gpu-memory-gb")
    if gpus is not None and gpus < 1:
        raise ConfigError(f"--gpus must be >= 1, got {gpus}")
    gpus = gpus or cfg.ray.num_gpus_total or cfg.trainer.num_workers * max(1, cfg.trainer.gpus_per_worker)
    result = plan(cfg, gpus, kind, levers)
    print(format_plan(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2, default=str))
    return result
