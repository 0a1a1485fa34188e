"""The OPD stage: generate → score → train → sync, over a cascade of teachers.

`opd_step` is one step, readable on one screen; `run_opd` is the loop around it (checks, workers,
cascade switches, checkpoints, resume).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from posttrain import checkpoint, faults
from posttrain.config import ConfigError, EvalConfig, OPDConfig, TeacherStage, to_dict
from posttrain.data.packing import pack
from posttrain.metrics import JsonlLog, RunLog
from posttrain.opd.ahead import Ahead, oversubscription
from posttrain.opd.checks import check_budgets, check_cascade, check_student
from posttrain.sft import (load_tokenizer, nonfinite_error, note_skipped, prepare_output_dir, resume_hint,
                           too_many_nonfinite, write_placement)
from posttrain.train.losses import expert_imbalance


@dataclass
class Generated:
    """One step's rollout and teacher scores, and what each took."""

    samples: list  # of posttrain.opd.rollout.Sample
    scores: list[dict]  # per sample: the teacher's log-probs of its response tokens (and top-k)
    rollout_s: float
    teacher_s: float


def generate_and_score(step: int, prompts, rollout, teacher, cfg: OPDConfig) -> Generated:
    """Stages 1 and 2 of a step: sample, then score the samples."""
    timer = time.perf_counter()
    # 1. Rollout: samples_per_prompt responses per prompt from the current student, with the sampler's log-probs.
    samples = rollout.generate([p.input_ids for p in prompts], seed=cfg.trainer.seed * 1_000_003 + step)
    rollout_s, timer = time.perf_counter() - timer, time.perf_counter()
    # 2. Score: the teacher's log-probs (temperature 1) of exactly those tokens.
    topk = cfg.loss.topk if cfg.loss.mode == "topk" else 0
    scores = teacher.score([(prompts[s.prompt_index].input_ids, s.response_ids) for s in samples], topk=topk)
    return Generated(samples, scores, rollout_s, time.perf_counter() - timer)


def opd_step(step: int, prompts, rollout, teacher, trainer, cfg: OPDConfig, ahead: Ahead | None = None) -> dict:
    """One on-policy distillation step over `prompts` (a list of `Prompt`); with `ahead`
    (rollout.async_steps: 1) its samples and scores were made while the previous step trained."""
    started = time.perf_counter()
    # 1-2. Rollout and teacher scores (posttrain.opd.ahead: already in flight, one step off-policy).
    got = ahead.take(step) if ahead else generate_and_score(step, prompts, rollout, teacher, cfg)
    samples, scores = got.samples, got.scores
    wait_s, timer = time.perf_counter() - started, time.perf_counter()

    # 3. Train: minimise the reverse KL on the student's own tokens (prompt tokens carry no loss).
    topk = cfg.loss.topk if cfg.loss.mode == "topk" else 0
    examples = []
    for sample, score in zip(samples, scores):
        prompt_len = len(prompts[sample.prompt_index].input_ids)
        extras = {"sampler_logprobs": _after_prompt(torch.tensor(sample.sampler_logprobs), prompt_len),
                  "teacher_logprobs": _after_prompt(score["logprobs"], prompt_len)}
        if topk:
            extras["teacher_topk_ids"] = _after_prompt(score["topk_ids"], prompt_len)
            extras["teacher_topk_logprobs"] = _after_prompt(score["topk_logprobs"], prompt_len)
        examples.append((prompts[sample.prompt_index].input_ids + sample.response_ids,
                         [0] * prompt_len + [1] * len(sample.response_ids), extras))
    result = trainer.train_step(pack(examples, cfg.data.pack_tokens), "opd", mode=cfg.loss.mode,
                                kl_coef=cfg.loss.kl_coef, clip_ratio=cfg.loss.clip_ratio)
    train_s, timer = time.perf_counter() - timer, time.perf_counter()

    # 4. Sync: the new student weights to the rollout engines, in buckets (queued behind the
    #    generation in flight when working ahead).
    weights = trainer.weight_buckets(cfg.rollout.sync_bucket_mb)
    if ahead:
        ahead.sync(weights)
    else:
        rollout.update_weights(weights)
    sync_s = time.perf_counter() - timer

    response_tokens = sum(len(s.response_ids) for s in samples)
    padding = _padding(prompts, samples, cfg, teacher_packed=teacher.packed)
    reverse_kl = sum(float(sum(s.sampler_logprobs) - score["logprobs"].sum()) for s, score in zip(samples, scores))
    step_s = time.perf_counter() - started  # wall time: with `ahead`, less than the stages' sum
    router = {}
    if result["expert_counts"] is not None:  # per layer: busiest expert / mean (1.0 = balanced)
        router = {"expert_imbalance": [round(x, 4) for x in expert_imbalance(result["expert_counts"])],
                  "expert_load": result["expert_counts"].int().tolist()}
    return {
        "reverse_kl": reverse_kl / response_tokens,
        "loss": result["totals"]["loss_sum"] / max(1, result["global_targets"]),
        "response_len": response_tokens / len(samples),
        "truncated_frac": sum(s.truncated for s in samples) / len(samples),
        "rollout_s": got.rollout_s, "teacher_s": got.teacher_s, "wait_s": wait_s, "train_s": train_s, "sync_s": sync_s,
        "step_s": step_s,
        "train_compute_s": result["compute_s"],
        "tokens": int(result["totals"]["tokens"]), "tokens_per_s": result["totals"]["tokens"] / step_s,
        "lr": result["lr"], "grad_norm": result["grad_norm"], "skipped": result["skipped"], **padding, **router,
    }


def _drains(step: int, stage_step: int, cfg: OPDConfig, total_steps: int) -> bool:
    """Whether the step after `step` must sample from `step`'s own weights (no working ahead past it):
    a step that checkpoints (so that resuming from it is exact), evaluates, ends a teacher stage or the run."""
    index, _ = cascade_position(cfg.teachers, step)
    return (step % cfg.checkpoint.every == 0 or step == total_steps or step == cfg.trainer.stop_after_step
            or stage_step == cfg.teachers[index].steps
            or (cfg.eval.every > 0 and step % cfg.eval.every == 0))


def _padding(prompts, samples, cfg: OPDConfig, teacher_packed: bool) -> dict:
    """Pad fraction of the hf rollout and teacher batches (training, and teachers that can be packed,
    run packed rows: no padding at all)."""
    from posttrain.opd.batching import rollout_padding, teacher_padding

    prompt_lens = [len(prompts[s.prompt_index].input_ids) for s in samples]
    response_lens = [len(s.response_ids) for s in samples]
    record = {}
    if cfg.rollout.backend == "hf":
        pad, total = rollout_padding(prompt_lens, response_lens, cfg.rollout.batch_size, cfg.rollout.num_workers,
                                     cfg.rollout.samples_per_prompt)
        record["rollout_pad_frac"] = pad / max(1, total)
    if cfg.teacher.backend == "hf" and teacher_packed:
        record["teacher_pad_frac"] = 0.0
    elif cfg.teacher.backend == "hf":
        pad, total = teacher_padding([p + r for p, r in zip(prompt_lens, response_lens)], cfg.teacher.batch_size,
                                     cfg.teacher.num_workers)
        record["teacher_pad_frac"] = pad / max(1, total)
    return record


def _after_prompt(values: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Per-response-token values laid out over prompt + response tokens (zeros over the prompt)."""
    return torch.cat([torch.zeros((prompt_len, *values.shape[1:]), dtype=values.dtype), values])


def eval_set(cfg: EvalConfig) -> list:
    """The eval-split examples the run is scored on every `eval.every` steps (none when off)."""
    from posttrain.eval.tasks import TASKS, examples

    if cfg.every <= 0:
        return []
    for task in cfg.tasks:
        if task not in TASKS:
            raise ConfigError(f"eval.tasks: unknown task {task!r}; tasks: {', '.join(TASKS)}")
    return [e for task in cfg.tasks for e in examples(task, "eval", limit=cfg.limit)]


def _evaluate(rollout, tokenizer, eval_examples: list, seed: int) -> dict:
    """Greedy task accuracy of the rollout workers' weights (the trainer's, after the sync)."""
    from posttrain.eval.run import task_accuracy

    started = time.perf_counter()
    result = task_accuracy(rollout.generate, tokenizer, eval_examples, seed)
    metrics = {f"eval/{task}": r["accuracy"] for task, r in result.items()}
    metrics.update({f"eval/{task}_len": r["response_len"] for task, r in result.items()})
    metrics["eval_s"] = time.perf_counter() - started
    return metrics


def cascade_position(teachers: list[TeacherStage], step: int) -> tuple[int, int]:
    """(stage index, step within that stage) of global step `step` (1-based)."""
    done = 0
    for index, stage in enumerate(teachers):
        if step <= done + stage.steps:
            return index, step - done
        done += stage.steps
    raise ValueError(f"step {step} is past the cascade's {done} steps")


def run_opd(cfg: OPDConfig, resume: bool = False, overwrite: bool = False, ray_address: str | None = None) -> Path:
    from posttrain.cluster import check_nodes, init_ray, placement_nodes
    from posttrain.opd.colocate import Colocation, SleepingRollout, SleepingTeacher
    from posttrain.opd.data import OPDPrompts
    from posttrain.opd.rollout import RolloutGroup
    from posttrain.opd.teacher import TeacherGroup
    from posttrain.train.group import TrainerGroup
    from posttrain.train.lora import check_lora

    out = Path(cfg.output_dir)
    # 1. Checks before any work: the cascade, one shared vocabulary, the prompt mixture.
    check_budgets(cfg)
    check_student(cfg)
    eval_examples = eval_set(cfg.eval)
    tokenizer = load_tokenizer(cfg.model)
    check_lora(cfg.model, cfg.lora)
    check_cascade(cfg, tokenizer)
    prepare_output_dir(out, resume, overwrite)
    prompts = OPDPrompts(cfg.data, tokenizer, seed=cfg.trainer.seed)
    total_steps = sum(stage.steps for stage in cfg.teachers)
    print(f"[opd] prompts: {prompts.report()}; {total_steps} steps over {len(cfg.teachers)} teacher(s)", flush=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    ckpt_root = out / "checkpoints"
    checkpoint.prepare_checkpoint_root(ckpt_root)
    state = {"stage": "opd", "step": 0, "cursor": 0, "cascade_index": 0, "stage_step": 0}
    found = checkpoint.latest_checkpoint(ckpt_root, cfg.checkpoint.verify_checksums) if resume else None

    # 2. The three worker groups (the teacher group is made per cascade stage).
    from posttrain.cluster import WorkerFailure

    init_ray(cfg.ray, ray_address)
    check_nodes(cfg.cluster.nodes)
    # rollout.colocate: the three groups share the trainer's devices and sleep in turn (posttrain.opd.colocate).
    shared = Colocation(cfg) if cfg.rollout.colocate else None
    trainer = TrainerGroup(cfg.model, cfg.trainer, cfg.optim, cfg.deepspeed, total_steps, pad_id=tokenizer.pad_token_id,
                           lora=cfg.lora, share=shared and shared.trainer)
    rollout = RolloutGroup(cfg.model.path, cfg.rollout, cfg.model.trust_remote_code, share=shared and shared.rollout)
    write_placement(out, {"trainer": trainer.placement_record(),
                          "rollout": {"strategy": cfg.rollout.placement, "colocated": bool(shared),
                                      "bundle_nodes": placement_nodes(shared.placement if shared else rollout.placement)}})
    # A rollout worker that Ray restarted is given the trainer's current weights before its work is redone.
    rollout.weights_source = lambda: trainer.weight_buckets(cfg.rollout.sync_bucket_mb)
    rollout = SleepingRollout(rollout) if shared else rollout
    # rollout.async_steps: 1 — the next step is sampled and scored while this one trains.
    ahead = Ahead(rollout, generate_and_score) if cfg.rollout.async_steps else None
    if ahead and (warning := oversubscription(cfg, os.cpu_count() or 1)):
        print(warning, flush=True)
    teacher, loaded_index = None, None
    try:
        if found is not None:
            path, state = found
            trainer.load_checkpoint(str(ckpt_root), path.name)
            rollout.update_weights(trainer.weight_buckets(cfg.rollout.sync_bucket_mb))
            print(f"[opd] resumed from {path} (step {state['step']}, teacher {state['cascade_index'] + 1}, "
                  f"{state['cursor']} prompts consumed)", flush=True)
        log = RunLog(out, total_steps, start_step=state["step"], tensorboard=cfg.logging.tensorboard,
                     progress_bar=cfg.logging.progress_bar, every=cfg.logging.every, desc="opd")
        # The prompt ids each step trained on: a resumed or fault-hit run can be checked against an undisturbed one.
        consumed = JsonlLog(out / "prompts.jsonl", start_step=state["step"])
        save = lambda: checkpoint.save(lambda tag: trainer.save_checkpoint(str(ckpt_root), tag), ckpt_root,  # noqa: E731
                                       state["step"], state, keep=cfg.checkpoint.keep)

        # 3. The loop.
        per_step = cfg.rollout.prompts_per_step
        for step in range(state["step"] + 1, total_steps + 1):
            index, stage_step = cascade_position(cfg.teachers, step)
            if index != loaded_index:
                if teacher is not None:
                    teacher.shutdown()  # the old teacher's devices are free before the next one loads
                teacher, loaded_index = TeacherGroup(cfg.teachers[index].path, cfg.teacher, cfg.model.trust_remote_code,
                                                     share=shared and shared.teacher), index
                teacher = SleepingTeacher(teacher) if shared else teacher
            batch = prompts.batch(state["cursor"], per_step)
            if ahead:
                ahead.prepare(step, batch, teacher, cfg)
                if not _drains(step, stage_step, cfg, total_steps):
                    ahead.prepare(step + 1, prompts.batch(state["cursor"] + per_step, per_step), teacher, cfg)
            try:
                record = opd_step(step, batch, rollout, teacher, trainer, cfg, ahead)
            except WorkerFailure as e:
                # Rollout or teacher workers gone past their restarts: the trainer still holds the
                # weights of the last finished step, so seal them; a dead trainer rank cannot be saved.
                done = checkpoint.complete_checkpoints(ckpt_root)
                if not trainer.broken and state["step"] > 0 and (not done or done[-1][0] < state["step"]):
                    save()
                raise WorkerFailure(f"step {step}: {e}; {resume_hint(ckpt_root)}") from None
            state.update(step=step, cursor=state["cursor"] + per_step, cascade_index=index, stage_step=stage_step)
            record.update(note_skipped(state, record.pop("skipped")))
            if eval_examples and (step % cfg.eval.every == 0 or step == total_steps):
                if ahead:
                    ahead.drain()  # the rollout workers hold this step's weights; nothing else runs
                record.update(_evaluate(rollout, tokenizer, eval_examples, seed=step))
            log.log({"step": step, "stage": index + 1, "teacher": cfg.teachers[index].path, "stage_step": stage_step,
                     **record})
            consumed.log({"step": step, "prompt_ids": [p.id for p in batch]})
            faults.kill_self("kill_after_step", step)
            stopping = step == cfg.trainer.stop_after_step
            nonfinite = too_many_nonfinite(state, cfg.trainer)
            if (step % cfg.checkpoint.every == 0 or step == total_steps or stopping or nonfinite
                    or stage_step == cfg.teachers[index].steps):
                save()
            if nonfinite:
                log.close()
                consumed.close()
                raise nonfinite_error(state, cfg.trainer, ckpt_root)
            if stopping:
                print(f"[opd] stopped after step {step} (trainer.stop_after_step); continue with --resume", flush=True)
                log.close()
                consumed.close()
                return ckpt_root / checkpoint.step_name(step)
        log.close()
        consumed.close()
        trainer.export_hf(str(out / "final"))
    finally:
        if ahead is not None:
            ahead.close()
        for group in (teacher, rollout, trainer):
            if group is not None:
                group.shutdown()
        if shared is not None:
            shared.release()
    print(f"[opd] done: metrics {out / 'metrics.jsonl'}, checkpoints {ckpt_root}, model {out / 'final'}", flush=True)
    return out / "final"
