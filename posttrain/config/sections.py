"""The stages' config sections: one dataclass per section, the SFT and OPD configs as their trees."""

from __future__ import annotations

from dataclasses import dataclass, field

from posttrain.config.fields import PLACEMENT_STRATEGIES, REQUIRED, non_negative, one_of, positive, unit_interval


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
    # vLLM: the prefill tokens a teacher engine scores per forward (its max_num_batched_tokens). Prompt
    # log-probs take full-vocabulary logits and an fp32 log-softmax for that many tokens, which vLLM's
    # start-up profile does not count: 16,384 (LLM's default) is ~15 GB at Qwen3's 151,936 vocabulary,
    # 4,096 ~3.7 GB. The engine's gpu_memory_utilization is lowered by that peak (engines.sizing).
    max_num_batched_tokens: int = positive(4096)
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
