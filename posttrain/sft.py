"""The SFT stage, written out: data → TrainerGroup → loop (step, log, checkpoint) → HF export."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import yaml

from posttrain import checkpoint, faults
from posttrain.config import SFTConfig, TrainerConfig, to_dict
from posttrain.metrics import RunLog
from posttrain.train.losses import expert_imbalance


class RunDirError(RuntimeError):
    """The output directory holds another run."""


class NonFiniteError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


def note_skipped(state: dict, skipped: bool) -> dict:
    """Count a skipped (non-finite) step in the run state, which is checkpointed: a resume keeps counting."""
    state["skipped_steps"] = state.get("skipped_steps", 0) + int(skipped)
    state["nonfinite_in_a_row"] = state.get("nonfinite_in_a_row", 0) + 1 if skipped else 0
    return {"skipped": skipped, "skipped_steps": state["skipped_steps"]}


def too_many_nonfinite(state: dict, trainer: TrainerConfig) -> bool:
    return 0 < trainer.max_nonfinite_in_a_row <= state.get("nonfinite_in_a_row", 0)


def nonfinite_error(state: dict, trainer: TrainerConfig, ckpt_root: Path) -> NonFiniteError:
    return NonFiniteError(
        f"steps {state['step'] - state['nonfinite_in_a_row'] + 1}..{state['step']} all had a non-finite loss or gradient "
        f"and were skipped (trainer.max_nonfinite_in_a_row={trainer.max_nonfinite_in_a_row}); stopped with checkpoint "
        f"{ckpt_root / checkpoint.step_name(state['step'])}: lower optim.lr or check the data, then --resume")


def resume_hint(ckpt_root: Path) -> str:
    found = checkpoint.complete_checkpoints(ckpt_root)
    return (f"--resume continues from the last complete checkpoint {found[-1][1]}" if found
            else "no checkpoint was written yet: the run starts afresh")


def holds_run(out: Path) -> bool:
    return (out / "metrics.jsonl").exists() or (out / "checkpoints").exists()


def prepare_output_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if holds_run(out) and not (resume or overwrite):
        raise RunDirError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    if overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def write_placement(out: Path, groups: dict) -> None:
    """`placement.json`: the node each worker of each group runs on (Ray node ids)."""
    import json

    (out / "placement.json").write_text(json.dumps(groups, indent=2))


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    from posttrain.models.tiny import ensure_model

    ensure_model(model_cfg.path, model_cfg.build_tiny_if_missing, model_cfg.tiny_seed)
    path = Path(model_cfg.path)
    if not path.exists() and (path.is_absolute() or model_cfg.path.startswith((".", "/")) or model_cfg.path.count("/") != 1):
        raise FileNotFoundError(f"model.path: {model_cfg.path} does not exist (expected a local directory or a hub id org/name)")
    return AutoTokenizer.from_pretrained(model_cfg.path, trust_remote_code=model_cfg.trust_remote_code)


def run_sft(cfg: SFTConfig, resume: bool = False, overwrite: bool = False, ray_address: str | None = None) -> Path:
    from posttrain.cluster import check_nodes, init_ray
    from posttrain.data.sft import SFTData
    from posttrain.train.group import TrainerGroup
    from posttrain.train.lora import check_lora

    out = Path(cfg.output_dir)
    prepare_output_dir(out, resume, overwrite)

    # 1. Everything that can be wrong with the input is found here, before Ray or a model starts.
    tokenizer = load_tokenizer(cfg.model)
    check_lora(cfg.model, cfg.lora)
    data = SFTData(cfg.data, tokenizer, seed=cfg.trainer.seed)
    total_steps = data.steps(cfg.trainer.global_batch_size, cfg.trainer.epochs, cfg.trainer.max_steps)
    print(f"[sft] data: {data.report.line()}; {total_steps} steps of {cfg.trainer.global_batch_size} sequences", flush=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (out / "data_report.yaml").write_text(yaml.safe_dump(vars(data.report), sort_keys=False, allow_unicode=True))

    ckpt_root = out / "checkpoints"
    checkpoint.prepare_checkpoint_root(ckpt_root)
    state = {"stage": "sft", "step": 0, "cursor": 0}
    found = checkpoint.latest_checkpoint(ckpt_root, cfg.checkpoint.verify_checksums) if resume else None

    # 2. The trainer workers.
    from posttrain.cluster import WorkerFailure

    init_ray(cfg.ray, ray_address)
    check_nodes(cfg.cluster.nodes)
    group = TrainerGroup(cfg.model, cfg.trainer, cfg.optim, cfg.deepspeed, total_steps, pad_id=tokenizer.pad_token_id,
                         lora=cfg.lora)
    try:
        write_placement(out, {"trainer": group.placement_record()})
        if found is not None:
            path, state = found
            group.load_checkpoint(str(ckpt_root), path.name)
            print(f"[sft] resumed from {path} (step {state['step']}, {state['cursor']} examples consumed)", flush=True)
        flops_per_token = _flops_per_token(cfg, group)
        log = RunLog(out, total_steps, start_step=state["step"], tensorboard=cfg.logging.tensorboard,
                     progress_bar=cfg.logging.progress_bar, every=cfg.logging.every, desc="sft")

        # 3. The loop.
        for step in range(state["step"] + 1, total_steps + 1):
            started = time.perf_counter()
            batches = data.batch(state["cursor"], cfg.trainer.global_batch_size)
            try:
                result = group.train_step(batches, "sft")
            except WorkerFailure as e:
                raise WorkerFailure(f"step {step}: {e}; {resume_hint(ckpt_root)}") from None
            state.update(step=step, cursor=state["cursor"] + cfg.trainer.global_batch_size)
            skipped = note_skipped(state, result["skipped"])
            log.log({**_sft_record(step, result, time.perf_counter() - started, flops_per_token, cfg), **skipped})
            faults.kill_self("kill_after_step", step)
            stopping = step == cfg.trainer.stop_after_step
            nonfinite = too_many_nonfinite(state, cfg.trainer)
            if step % cfg.checkpoint.every == 0 or step == total_steps or stopping or nonfinite:
                checkpoint.save(lambda tag: group.save_checkpoint(str(ckpt_root), tag), ckpt_root, step, state,
                                keep=cfg.checkpoint.keep)
            if nonfinite:
                log.close()
                raise nonfinite_error(state, cfg.trainer, ckpt_root)
            if stopping:
                log.close()
                print(f"[sft] stopped after step {step} (trainer.stop_after_step); continue with --resume", flush=True)
                return ckpt_root / checkpoint.step_name(step)
        log.close()

        # 4. The HF export: what transformers and vLLM load as they are.
        group.export_hf(str(out / "final"))
    finally:
        group.shutdown()
    print(f"[sft] done: metrics {out / 'metrics.jsonl'}, checkpoints {ckpt_root}, model {out / 'final'}", flush=True)
    return out / "final"


def _flops_per_token(cfg: SFTConfig, group) -> float:
    if cfg.logging.peak_flops_per_device <= 0:
        return 0.0
    from transformers import AutoConfig

    from posttrain.models.params import train_flops_per_token

    return train_flops_per_token(AutoConfig.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code),
                                 cfg.data.max_seq_len)


def _sft_record(step: int, result: dict, step_s: float, flops_per_token: float, cfg: SFTConfig) -> dict:
    totals, targets = result["totals"], max(1, result["global_targets"])
    nll, aux = totals["nll_sum"] / targets, totals["aux_sum"] / targets
    record = {
        "step": step,
        "loss": nll + cfg.trainer.router_aux_loss_coef * aux,
        "nll": nll,
        "load_balancing_loss": aux,
        "lr": result["lr"],
        "grad_norm": result["grad_norm"],
        "tokens": int(totals["tokens"]),
        "target_tokens": int(targets),
        "micro_batches_per_worker": result["micro_batches"],
        "tokens_per_s": totals["tokens"] / step_s,
        "step_s": step_s,
    }
    if flops_per_token:
        record["mfu"] = totals["tokens"] * flops_per_token / step_s / (cfg.logging.peak_flops_per_device * cfg.trainer.num_workers)
    if result["expert_counts"] is not None:
        record["expert_imbalance"] = [round(x, 4) for x in expert_imbalance(result["expert_counts"])]
        record["expert_load"] = result["expert_counts"].int().tolist()
    return record
