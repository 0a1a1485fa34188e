"""One trainer process: a DeepSpeed engine over one data-parallel rank (a Ray actor).

Both stages drive it the same way: `train_step(micro_batches, loss, global_targets)` runs
forward/backward over this rank's packed micro-batches and one optimizer step. What differs between
SFT and OPD is only the per-token loss (a `posttrain.losses.Loss`).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import torch

from posttrain.config import DeepSpeedConfig, LoRAConfig, LossConfig, ModelConfig, OptimConfig, TrainerConfig
from posttrain.data.packing import IGNORE, PackedBatch
from posttrain.infra import faults
from posttrain.infra.checkpoint import atomic_dir
from posttrain.infra.runlog import quiet_library_progress
from posttrain.losses import Loss
from posttrain.losses.chunked import (LossTotals, chunked_loss, decoder_and_head, fused_nll_kernel, head_grad_in_place,
                                     sparse_tied_embedding_grad)
from posttrain.losses.router import expert_counts, load_balancing_loss
from posttrain.models.chat_format import donor_generation_config, export_tokenizer
from posttrain.models.packed_attention import register
from posttrain.models.params import add_relative_noise_
from posttrain.train.deepspeed_setup import (collective_device, deepspeed_config, init_distributed, make_optimizer,
                                             make_schedule, sparse_moe_block_classes)
from posttrain.train.lora import apply_lora, merged_state_dict
from posttrain.train.nccl_sync import NCCLSender
from posttrain.train.results import LossSums, RankStep
from posttrain.train.weight_stream import SyncStats, drain, gathered, named_weights, send_weights


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class TrainerWorker:
    def __init__(self, rank: int, world_size: int, num_threads: int):
        self.rank, self.world_size = rank, world_size
        torch.set_num_threads(num_threads)
        quiet_library_progress()
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")

    def address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master: tuple[str, int], model_cfg: ModelConfig, trainer_cfg: TrainerConfig,
              optim_cfg: OptimConfig, ds_cfg: DeepSpeedConfig, total_steps: int, lora_cfg: LoRAConfig | None = None) -> dict:
        import deepspeed
        from transformers import AutoModelForCausalLM

        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK="0",
                          MASTER_ADDR=master[0], MASTER_PORT=str(master[1]))
        init_distributed(self.device.type)
        torch.manual_seed(trainer_cfg.seed + self.rank)
        self.trainer_cfg, self.model_cfg = trainer_cfg, model_cfg
        self.lora_cfg = lora_cfg if lora_cfg is not None and lora_cfg.enabled else None

        self.ds_config = deepspeed_config(ds_cfg, optim_cfg, pin_memory=self.device.type == "cuda")
        dtype = torch.bfloat16 if model_cfg.dtype == "bfloat16" else torch.float32
        hf_ds = None
        if ds_cfg.zero_stage == 3:
            # Keeps transformers loading each rank's shard only (zero.Init), not the whole model per rank.
            from transformers.integrations import HfDeepSpeedConfig

            hf_ds = HfDeepSpeedConfig(self.ds_config)  # noqa: F841 — must stay alive during from_pretrained
        register()  # attn_implementation "sdpa_packed" (the default) is posttrain's, not transformers'
        model = AutoModelForCausalLM.from_pretrained(
            model_cfg.path, dtype=dtype, attn_implementation=model_cfg.attn_implementation,
            trust_remote_code=model_cfg.trust_remote_code,
        )
        model.config.use_cache = False
        if self.device.type == "cpu" and ds_cfg.zero_stage < 3:
            _own_host_weights(model)
        if trainer_cfg.activation_checkpointing:
            # Non-reentrant: works with frozen inputs (LoRA) and without requiring grad on the embeddings.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if ds_cfg.zero_stage == 3:
            deepspeed.utils.set_z3_leaf_modules(model, sparse_moe_block_classes(model))
        if trainer_cfg.freeze_router:
            for name, param in model.named_parameters():
                if name.endswith("mlp.gate.weight"):
                    param.requires_grad_(False)
        if self.lora_cfg is not None:
            model = apply_lora(model, self.lora_cfg)  # the base frozen; only the adapters train
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, optim_cfg, ds_cfg)
        schedule = make_schedule(optimizer, optim_cfg, total_steps)
        self.engine, self.optimizer, _, self.schedule = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=schedule, config=self.ds_config
        )
        del hf_ds
        if self.world_size == 1 and ds_cfg.zero_stage == 0:
            # One rank holds the only gradients, yet DeepSpeed's stage-0 all-reduce flattens every one of them
            # into a 500M-element bucket (a transient copy of all gradients: 0.95 GB for the real-shape test's
            # 237M parameters, while the AdamW state is live) to average over that one rank. Skipping it is exact.
            self.engine.enable_backward_allreduce = False
        self.config = model.config
        self.decoder, self.head = decoder_and_head(self.engine.module)
        # Stage 0 in fp32 reads gradients from `.grad` after backward: the chunked loss may add the head's
        # [V, H] weight gradient there in place (no autograd temporaries of that size; posttrain.losses.chunked).
        self.head_grad_in_place = head_grad_in_place(self.head, ds_cfg.zero_stage, self.engine.bfloat16_enabled())
        if self.head_grad_in_place:
            sparse_tied_embedding_grad(self.engine.module, self.head)  # nor a dense [V, H] for the embedding's
        import ray

        numel = lambda p: p.ds_numel if hasattr(p, "ds_numel") else p.numel()  # noqa: E731
        return {"num_params": sum(numel(p) for p in model.parameters()),
                "trainable_params": sum(numel(p) for p in model.parameters() if p.requires_grad),
                "node_id": ray.get_runtime_context().get_node_id()}

    # ----------------------------------------------------------------------------------------------

    def train_step(self, micro_batches: list[PackedBatch], loss: Loss, global_targets: int,
                   loss_cfg: LossConfig | None = None) -> RankStep:
        """Forward/backward over this rank's micro-batches, then one optimizer step.

        `global_targets` is the number of target tokens in the whole global batch: each
        micro-batch's loss is a sum divided by it, so the step's gradient does not depend on how
        the batch was split across workers and micro-batches.
        """
        self.engine.train()
        start = time.perf_counter()
        sums, counts_LE = LossSums(), None
        for batch in micro_batches:
            batch = batch.to(self.device)
            hidden_TH, router_logits = self._forward(batch)
            loss_sum, part = self._micro_batch_loss(hidden_TH, router_logits, batch, loss, loss_cfg)
            loss_sum = _fault_nan_loss(loss_sum, self.engine.global_steps + 1)
            # DeepSpeed averages gradients over ranks; the loss is already a share of the global sum.
            self.engine.backward(loss_sum * self.world_size / max(1, global_targets), scale_wrt_gas=False)
            sums = sums + part
            if router_logits and batch.num_examples:
                c = expert_counts(router_logits, self.config.num_experts_per_tok).cpu()
                counts_LE = c if counts_LE is None else counts_LE + c
        lr = float(self.schedule.get_last_lr()[0])  # the rate this step applies
        if self.engine.zero_optimization_stage() == 0:
            grad_norm, skipped = _step_unpartitioned(self.engine)
        else:
            self.engine.step()
            grad_norm, skipped = self.engine.get_global_grad_norm(), not self.engine.was_step_applied()
        sums.tokens = sum(b.num_tokens for b in micro_batches)
        # The non-finite guard is DeepSpeed's own under ZeRO: its optimizer all-reduces an overflow
        # flag / the global grad norm, and on inf or NaN (fp32 and bf16 alike) zeroes the gradients
        # and skips the update and the schedule step on every rank together.
        return RankStep(sums, counts_LE, None if grad_norm is None else float(grad_norm), skipped, lr,
                        time.perf_counter() - start)

    def _forward(self, batch: PackedBatch) -> tuple[torch.Tensor, tuple]:
        """The row's last hidden states [T, H] (after the final norm: what the LM head reads) and the
        router logits. The engine runs the whole model, so DeepSpeed's hooks see the step as always,
        with `logits_to_keep` selecting no position: the LM head runs later, on target positions only.
        (An empty 1-D index: transformers 5.16-5.19, which vLLM's CPU wheel needs, index with it as later
        versions do; a 2-D boolean mask only later ones take.)"""
        captured = []
        hook = self.decoder.register_forward_hook(lambda _m, _args, out: captured.append(out.last_hidden_state))
        try:
            out = self.engine(input_ids=batch.input_ids[None], position_ids=batch.position_ids[None],
                              output_router_logits=True, use_cache=False,
                              logits_to_keep=torch.zeros(0, dtype=torch.long, device=self.device))
        finally:
            hook.remove()
        return captured[-1][0], out.router_logits

    def _micro_batch_loss(self, hidden_TH, router_logits, batch: PackedBatch, loss: Loss,
                          loss_cfg) -> tuple[torch.Tensor, LossSums]:
        """The loss summed over the micro-batch's target tokens (+ the router's load-balancing term)."""
        mask_T = batch.labels != IGNORE
        totals = self._token_loss(hidden_TH[mask_T], batch.labels[mask_T], loss, loss_cfg,
                                  {name: batch.extras[name][mask_T] for name in loss.inputs})
        loss_sum, targets = totals.loss, int(mask_T.sum())
        sums = LossSums(loss=loss_sum.item(), targets=targets,
                        metrics={name: float(value) for name, value in totals.metrics.items()})
        # The aux loss is a per-micro-batch mean; weighting it by the micro-batch's target count makes
        # the step's total the target-weighted mean over the global batch. Computed even for an empty
        # placeholder (weight 0): under ZeRO-3 every rank must run the same graph, or the ranks'
        # recorded module traces diverge and the next all-gather hangs.
        coef = self.trainer_cfg.router_aux_loss_coef
        if coef > 0 and router_logits:
            aux = load_balancing_loss(router_logits, self.config.num_experts, self.config.num_experts_per_tok)
            loss_sum = loss_sum + coef * aux * targets
            sums.aux = aux.item() * targets
        return loss_sum, sums

    def _token_loss(self, hidden_NH, targets_N, loss: Loss, loss_cfg, inputs: dict) -> LossTotals:
        """The per-token loss at the N target positions, summed: LM head + loss in chunks
        (posttrain.losses.chunked), or Liger's fused kernel where it applies."""
        partitioned = self.engine.zero_optimization_partition_weights()
        fused = fused_nll_kernel(self.head, loss, self.device, partitioned)
        if fused is not None:
            return fused(hidden_NH, targets_N)
        chunk = self.trainer_cfg.loss_chunk_tokens
        num_chunks = None
        if partitioned and self.world_size > 1:
            # Each head call gathers its partitioned weight (a collective): every rank makes as many
            # calls as the rank with the most target tokens in this micro-batch.
            import torch.distributed as dist

            device = collective_device(dist.get_backend(), self.device)
            count = torch.tensor([-(-targets_N.numel() // chunk)], device=device)
            dist.all_reduce(count, op=dist.ReduceOp.MAX)
            num_chunks = int(count.item())
        return chunked_loss(hidden_NH, self.head, targets_N, loss, loss_cfg, inputs, chunk, num_chunks,
                            grad_in_place=self.head_grad_in_place)

    # ----------------------------------------------------------------------------------------------

    def save_checkpoint(self, root: str, tag: str) -> None:
        from safetensors.torch import save_file

        # With LoRA only the adapters (and their optimizer state) are saved: the frozen base is the
        # model.path it was loaded from.
        self.engine.save_checkpoint(root, tag=tag, save_latest=False, exclude_frozen_parameters=self.lora_cfg is not None)
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(Path(root) / tag / f"rng_rank{self.rank}.safetensors"))

    def load_checkpoint(self, root: str, tag: str) -> None:
        from safetensors.torch import load_file

        load_path, _ = self.engine.load_checkpoint(root, tag=tag, load_optimizer_states=True,
                                                   load_lr_scheduler_states=True,
                                                   load_module_strict=self.lora_cfg is None)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {Path(root) / tag}")
        rng = load_file(str(Path(root) / tag / f"rng_rank{self.rank}.safetensors"))
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"])

    def module_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The trained module's weights on rank 0 (gathered layer by layer under ZeRO-3); None elsewhere.
        With LoRA these are the PeftModel's: base layers and adapters under peft's names."""
        if self.engine.zero_optimization_partition_weights():
            return self.engine._zero3_consolidated_16bit_state_dict()
        if self.rank != 0:
            return None
        return {k: v.detach().cpu() for k, v in self.engine.module.state_dict().items()}

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The model's weights under the base model's names on rank 0 — with LoRA, merged (base + B·A)."""
        state = self.module_state_dict()
        if self.lora_cfg is None:
            return state
        return merged_state_dict(self.engine.module, state, zero3=self.engine.zero_optimization_partition_weights())

    def export_hf(self, output_dir: str) -> str | None:
        """Save an HF checkpoint (safetensors, config, generation config, tokenizer) from rank 0, in the chat format
        of `model.chat_template_from` where that is set (its template, special tokens and generation config)."""
        adapter_only = self.lora_cfg is not None and self.lora_cfg.export == "adapter"
        state = self.module_state_dict() if adapter_only else self.full_state_dict()
        if self.rank != 0:
            return None
        with atomic_dir(output_dir) as tmp:
            if adapter_only:  # peft's adapter_config.json + adapter_model.safetensors, on model.path
                self.engine.module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            else:  # plain weights under the base names (merged with LoRA): what transformers and vLLM load
                model = self.engine.module.get_base_model() if self.lora_cfg is not None else self.engine.module
                donor = donor_generation_config(self.model_cfg.chat_template_from) if self.model_cfg.chat_template_from else None
                if donor is not None:
                    model.generation_config = donor
                model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            export_tokenizer(self.model_cfg).save_pretrained(tmp)
        return output_dir

    def send_weights(self, receivers: list, nodes: list[str], bucket_mb: float, transfer: str = "shm",
                     engine_tp: int = 1) -> SyncStats | None:
        """Rank 0: stream the current weights (merged with LoRA) into the engine actors `receivers`
        (`nodes`: the node each runs on), one bucket at a time; every rank must call (ZeRO-3 gathers).
        `transfer` "nccl": vLLM's NCCL weight-transfer engine instead (`engine_tp`: each engine's workers)."""
        import ray

        zero3 = bool(self.engine.zero_optimization_partition_weights())
        lora = self.lora_cfg is not None
        if transfer == "nccl":
            key = tuple(r._actor_id.hex() for r in receivers)
            if getattr(self, "nccl", (None,))[0] != key:  # the first sync, or engines restarted: a new group
                if getattr(self, "nccl", None) is not None:
                    self.nccl[1].close()  # the old group's communicators, on both sides, before a new one
                address = (ray.util.get_node_ip_address(), free_port())
                self.nccl = key, NCCLSender(self.engine.module, zero3, lora, receivers, [engine_tp] * len(receivers),
                                            self.rank, address)
            return self.nccl[1].send()
        named = named_weights(self.engine.module, zero3=zero3, lora=lora)
        if self.rank != 0:
            if zero3:
                drain(named)
            return None
        return send_weights(named, receivers, nodes, ray.get_runtime_context().get_node_id(), bucket_mb)

    @torch.no_grad()
    def target_logprobs(self, micro_batches: list[PackedBatch], names: tuple[str, ...]) -> list[dict]:
        """`posttrain check`: the trainer's log-probs of each micro-batch's targets (what the loss reads as
        log π_θ), with the batch's `names` values at the same positions; no update. Every rank must call
        (under ZeRO-3 the forward and the head are collectives)."""
        self.engine.eval()
        out = []
        for batch in micro_batches:
            batch = batch.to(self.device)
            hidden_TH, _ = self._forward(batch)
            mask_T = batch.labels != IGNORE
            collected = []

            def probe(logits_NV, targets_N, cfg=None):  # the chunked head's logits, read instead of a loss
                collected.append(torch.log_softmax(logits_NV.float(), -1).gather(-1, targets_N[:, None])[:, 0])
                return logits_NV.new_zeros(targets_N.shape, dtype=torch.float32)

            self._token_loss(hidden_TH[mask_T], batch.labels[mask_T], Loss(probe), None, {})
            trainer_N = torch.cat(collected).cpu() if collected else torch.zeros(0)
            out.append({"trainer": trainer_N, **{n: batch.extras[n][mask_T].float().cpu() for n in names}})
        self.engine.train()
        return out

    def perturb(self, scale: float, seed: int) -> None:
        """`posttrain check`: add noise of `scale` x each tensor's standard deviation to every weight, alike on
        every rank (one seed; under ZeRO-3 each module gathered, changed on rank 0 and partitioned again)."""
        zero3 = bool(self.engine.zero_optimization_partition_weights())
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in self.engine.module.parameters():
                with gathered([param], zero3, modifier_rank=0):
                    add_relative_noise_(param, scale, generator)

    def free_device_cache(self) -> None:
        """Colocated, before an engine wakes or starts on this device: hand back the blocks torch's caching
        allocator keeps (vLLM's start and wake-up read the device's free memory, not torch's)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def memory(self) -> dict:
        """This process's peak memory: host resident set (bytes) and, on a GPU, allocated device memory."""
        import resource

        peak = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # Linux: KiB
        if self.device.type == "cuda":
            peak["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(self.device)
        return peak

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _step_unpartitioned(engine) -> tuple[float, bool]:
    """ZeRO stage 0 (nothing partitioned: the cheapest engine for one worker, or plain data parallel).

    DeepSpeed then hands the step to the torch optimizer as is, with no overflow check of its own,
    so the non-finite guard ZeRO gives is written here: each rank's gradient norm before `step()`
    all-reduces the gradients, a skip agreed over ranks, and on inf or NaN no update and no schedule
    step. The norm reported is this rank's before the reduction (the global one with one worker).
    """
    import torch.distributed as dist

    norm = torch.nn.utils.get_total_norm([p.grad for p in engine.module.parameters() if p.grad is not None])
    if dist.is_initialized():
        finite = torch.tensor([float(torch.isfinite(norm))], device=collective_device(dist.get_backend(), engine.device))
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    else:
        finite = torch.isfinite(norm).float()
    if finite.item() < 1:
        engine.zero_grad()
        engine.global_steps += 1  # as DeepSpeed counts a step ZeRO skipped
        engine.skipped_steps += 1
        return float(norm), True
    engine.step()
    return float(norm), False


def _own_host_weights(model: torch.nn.Module) -> None:
    """Give every parameter and buffer memory of its own on a CPU trainer.

    transformers maps the safetensors file and keeps as views of it the tensors it did not convert, so
    the mapping stays open while tensors it did convert (the fused experts) were copied out of it: the
    file's pages for those stay resident beside the copies (0.30 GB for the real-shape test's model, in
    every trainer process), and every view turns into a private copy page by page as AdamW writes it.
    One copy each now, one tensor at a time, and the mapping is released. (On a GPU the move to the
    device does this; under ZeRO-3 DeepSpeed's partitioning does.)"""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()


def _fault_nan_loss(loss: torch.Tensor, step: int) -> torch.Tensor:
    """The `nan_loss:N` test fault (posttrain.infra.faults): step N's loss becomes NaN on every rank."""
    return loss * float("nan") if faults.fires("nan_loss", step) else loss
