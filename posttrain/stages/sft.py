"""The SFT stage, written out: data → TrainerGroup → loop (step, log, checkpoint) → HF export."""

from __future__ import annotations

import time
from pathlib import Path

from posttrain.config import SFTConfig, to_dict
from posttrain.data.sft import SFTData
from posttrain.infra import faults
from posttrain.infra.cluster import WorkerFailure
from posttrain.infra.runlog import RunLog, check_wandb
from posttrain.infra.stopping import StopSignals
from posttrain.losses import LOSSES
from posttrain.models.params import train_flops_per_token
from posttrain.stages.contract import finished_already, prepare_run
from posttrain.stages.driver import NonFinite, RunDir, Schedule, load_tokenizer, releases_output_dir, start_ray
from posttrain.train.group import TrainerGroup
from posttrain.train.lora import check_lora
from posttrain.train.results import TrainStep


@releases_output_dir
def run_sft(cfg: SFTConfig, resume: bool = False, overwrite: bool = False, ray_address: str | None = None,
            accept: tuple[str, ...] = ()) -> Path:
    run = RunDir(cfg.output_dir)
    if finished_already(run, cfg, "sft", resume, cfg.trainer.max_steps, accept):  # said before any data, model or Ray
        return run.path / "final"
    prepare_run(run, cfg, resume, overwrite, accept)  # locked; what --resume may change checked

    # 1. Everything that can be wrong with the input is found here, before Ray or a model starts.
    tokenizer = load_tokenizer(cfg.model)
    check_lora(cfg.model, cfg.lora)
    check_wandb(cfg.logging)
    data = SFTData(cfg.data, tokenizer)
    total_steps = data.steps(cfg.trainer.global_batch_size, cfg.trainer.epochs, cfg.trainer.max_steps)
    print(f"[sft] data: {data.report.line()}; {total_steps} steps of {cfg.trainer.global_batch_size} sequences", flush=True)
    run.write_config(cfg)
    run.write_yaml("data_report.yaml", vars(data.report))
    found = run.resume_point(resume, cfg.checkpoint.verify_checksums)
    state = {**(found[1] if found else {"stage": "sft", "step": 0, "cursor": 0}), "total_steps": total_steps}
    schedule = Schedule(total_steps, cfg.checkpoint.every, cfg.trainer.stop_after_step)
    nonfinite = NonFinite(cfg.trainer)
    flops_per_token = _flops_per_token(cfg)

    # 2. The trainer workers (Ctrl-C / SIGTERM from here on: finish the step, checkpoint, stop).
    start_ray(cfg.ray, cfg.cluster, ray_address)
    with StopSignals("sft") as stop, TrainerGroup(cfg.model, cfg.trainer, cfg.optim, cfg.deepspeed, total_steps,
                                                  pad_id=tokenizer.pad_token_id, lora=cfg.lora) as group:
        run.write_placement({"trainer": group.placement_record()})
        if found is not None:
            group.load_checkpoint(str(run.checkpoints), found[0].name)
            print(f"[sft] resumed from {found[0]} (step {state['step']}, {state['cursor']} examples consumed)", flush=True)

        # 3. The loop.
        with RunLog(run.path, cfg.logging, total_steps, start_step=state["step"], desc="sft",
                    run_config=to_dict(cfg)) as log:
            for step in range(state["step"] + 1, total_steps + 1):
                started = time.perf_counter()
                batches = data.batch(state["cursor"], cfg.trainer.global_batch_size)
                try:
                    result = group.train_step(batches, LOSSES["nll"])
                except WorkerFailure as e:
                    raise WorkerFailure(f"step {step}: {e}; {run.resume_hint()}") from None
                state.update(step=step, cursor=state["cursor"] + cfg.trainer.global_batch_size)
                skipped = nonfinite.note(state, result.skipped)
                log.log({**_sft_record(step, result, time.perf_counter() - started, flops_per_token, cfg), **skipped})
                faults.after_step(step, lambda: stop.requested)
                too_many = nonfinite.too_many(state)
                if schedule.saves(step, nonfinite=too_many) or stop.requested:
                    run.save(lambda tag: group.save_checkpoint(str(run.checkpoints), tag), state, keep=cfg.checkpoint.keep)
                if too_many:
                    raise nonfinite.error(state, run)
                if stop.requested:
                    raise stop.interrupted(run.path, step, run.checkpoint_of(step))
                if schedule.stops(step):
                    print(f"[sft] stopped after step {step} (trainer.stop_after_step); continue with --resume", flush=True)
                    return run.checkpoint_of(step)

        # 4. The HF export: what transformers and vLLM load as they are.
        group.export_hf(str(run.path / "final"))
    print(f"[sft] done: metrics {run.path / 'metrics.jsonl'}, checkpoints {run.checkpoints}, model {run.path / 'final'}",
          flush=True)
    return run.path / "final"


def _flops_per_token(cfg: SFTConfig) -> float:
    if cfg.logging.peak_flops_per_device <= 0:
        return 0.0
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    return train_flops_per_token(config, cfg.data.max_seq_len)


def _sft_record(step: int, result: TrainStep, step_s: float, flops_per_token: float, cfg: SFTConfig) -> dict:
    sums, targets = result.sums, max(1, result.global_targets)
    nll, aux = sums.loss / targets, sums.aux / targets
    record = {
        "step": step,
        "loss": nll + cfg.trainer.router_aux_loss_coef * aux,
        "nll": nll,
        "load_balancing_loss": aux,
        "lr": result.lr,
        "grad_norm": result.grad_norm,
        "tokens": sums.tokens,
        "target_tokens": int(targets),
        "micro_batches_per_worker": result.micro_batches,
        "tokens_per_s": sums.tokens / step_s,
        "step_s": step_s,
    }
    if flops_per_token:
        record["mfu"] = sums.tokens * flops_per_token / step_s / (cfg.logging.peak_flops_per_device * cfg.trainer.num_workers)
    return {**record, **result.loss_metrics(), **result.router_metrics()}
