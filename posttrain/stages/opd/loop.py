"""The OPD stage: generate → score → train → sync, over a cascade of teachers.

`posttrain.stages.opd.step.opd_step` is one step, readable on one screen; `run_opd` is the loop
around it (checks, workers, cascade switches, checkpoints, resume).
"""

from __future__ import annotations

from pathlib import Path

from posttrain.config import OPDConfig, TeacherStage, to_dict
from posttrain.data.prompts import OPDPrompts
from posttrain.infra import faults
from posttrain.infra.cluster import WorkerFailure
from posttrain.infra.runlog import JsonlLog, RunLog
from posttrain.infra.stopping import StopSignals
from posttrain.stages.contract import finished_already, prepare_run
from posttrain.stages.driver import NonFinite, RunDir, Schedule, releases_output_dir, start_ray
from posttrain.stages.opd.checks import check_opd
from posttrain.stages.opd.preflight import Check, FirstStepCheck
from posttrain.stages.opd.step import opd_step
from posttrain.stages.opd.workers import OPDWorkers


def cascade_position(teachers: list[TeacherStage], step: int) -> tuple[int, int]:
    """(stage index, step within that stage) of global step `step` (1-based)."""
    done = 0
    for index, stage in enumerate(teachers):
        if step <= done + stage.steps:
            return index, step - done
        done += stage.steps
    raise ValueError(f"step {step} is past the cascade's {done} steps")


def opd_schedule(cfg: OPDConfig, total_steps: int) -> Schedule:
    ends = [sum(stage.steps for stage in cfg.teachers[:i + 1]) for i in range(len(cfg.teachers))]
    return Schedule(total_steps, cfg.checkpoint.every, cfg.trainer.stop_after_step, eval_every=cfg.eval.every,
                    stage_ends=frozenset(ends))


def switch(cfg: OPDConfig, workers: OPDWorkers, index: int, step: int):
    """Cascade stage `index`'s teacher group, announced: the reverse KL is measured against it from here on."""
    last = sum(s.steps for s in cfg.teachers[:index + 1])
    print(f"[opd] teacher {index + 1}/{len(cfg.teachers)}: {cfg.teachers[index].path}, steps {step}-{last}"
          + (" (the reverse KL is measured against this teacher from here on)" if index else ""), flush=True)
    return workers.teacher_for(index)


def evaluation(workers: OPDWorkers, tokenizer, eval_examples: list, step: int) -> dict:
    """The eval metrics of the current student, and their console line."""
    metrics = workers.evaluate(tokenizer, eval_examples, seed=step)
    scores = ", ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in metrics.items()
                       if k.startswith("eval/") and not k.endswith("_len"))
    print(f"[opd] eval at step {step}: accuracy {scores} ({metrics['eval_s']:.1f} s)", flush=True)
    return metrics


@releases_output_dir
def run_opd(cfg: OPDConfig, resume: bool = False, overwrite: bool = False, ray_address: str | None = None,
            accept: tuple[str, ...] = (), first_step_check: bool = True) -> Path:
    run = RunDir(cfg.output_dir)
    if finished_already(run, cfg, "opd", resume, sum(stage.steps for stage in cfg.teachers), accept):
        return run.path / "final"  # said before any model or Ray work
    # 1. Checks before any work: the models, the cascade, one shared vocabulary, the output dir, the prompt mixture.
    tokenizer, eval_examples = check_opd(cfg)
    prepare_run(run, cfg, resume, overwrite, accept)  # locked; what --resume may change checked
    prompts = OPDPrompts(cfg.data, tokenizer)
    total_steps, per_step = sum(stage.steps for stage in cfg.teachers), cfg.rollout.prompts_per_step
    print(f"[opd] prompts: {prompts.report()}; {total_steps} steps over {len(cfg.teachers)} teacher(s)", flush=True)
    run.write_config(cfg)
    found = run.resume_point(resume, cfg.checkpoint.verify_checksums)
    state = {**(found[1] if found else {"stage": "opd", "step": 0, "cursor": 0, "cascade_index": 0, "stage_step": 0}),
             "total_steps": total_steps}
    schedule, nonfinite = opd_schedule(cfg, total_steps), NonFinite(cfg.trainer)

    # 2. The worker groups (a teacher group per cascade stage). Ctrl-C / SIGTERM: finish the step, checkpoint, stop.
    start_ray(cfg.ray, cfg.cluster, ray_address)
    with StopSignals("opd") as stop, OPDWorkers(cfg, total_steps, tokenizer.pad_token_id) as workers:
        run.write_placement(workers.placement_record())
        if found is not None:
            workers.resume(run, found[0], state)
        # The prompt ids each step trained on: a resumed or fault-hit run can be checked against an undisturbed one.
        with RunLog(run.path, cfg.logging, total_steps, start_step=state["step"], desc="opd",
                    run_config=to_dict(cfg)) as log, \
                JsonlLog(run.path / "prompts.jsonl", start_step=state["step"]) as consumed:
            if eval_examples and state["step"] == 0:  # the baseline every later eval is read against
                log.log({"step": 0, **evaluation(workers, tokenizer, eval_examples, 0)}, step_line=False)

            # 3. The loop.
            for step in range(state["step"] + 1, total_steps + 1):
                index, stage_step = cascade_position(cfg.teachers, step)
                teacher = workers.teacher_for(index) if index == workers.teacher_index else switch(cfg, workers, index, step)
                batch = prompts.batch(state["cursor"], per_step)
                if workers.ahead:
                    workers.ahead.prepare(step, batch, teacher, cfg)
                    if not schedule.drains(step):
                        workers.ahead.prepare(step + 1, prompts.batch(state["cursor"] + per_step, per_step), teacher, cfg)
                source = samples_source(workers, cfg, batch, teacher, step, first_step_check)  # step 1: checks 2, 5
                try:
                    result = opd_step(step, batch, workers.rollout, teacher, workers.trainer, cfg, source)
                except WorkerFailure as e:
                    workers.save_after_failure(run, state)
                    raise WorkerFailure(f"step {step}: {e}; {run.resume_hint()}") from None
                state.update(step=step, cursor=state["cursor"] + per_step, cascade_index=index, stage_step=stage_step)
                record = {"step": step, "stage": index + 1, "teacher": cfg.teachers[index].path, "stage_step": stage_step,
                          **result.metrics(), **nonfinite.note(state, result.skipped),
                          **getattr(source, "check_metrics", {})}
                if eval_examples and schedule.evaluates(step):
                    record.update(evaluation(workers, tokenizer, eval_examples, step))
                log.log(record)
                consumed.log({"step": step, "prompt_ids": [p.id for p in batch]})
                faults.after_step(step, lambda: stop.requested)
                too_many = nonfinite.too_many(state)
                if schedule.saves(step, nonfinite=too_many) or stop.requested:
                    workers.save(run, state)
                if too_many:
                    raise nonfinite.error(state, run)
                if stop.requested:
                    raise stop.interrupted(run.path, step, run.checkpoint_of(step))
                if schedule.stops(step):
                    print(f"[opd] stopped after step {step} (trainer.stop_after_step); continue with --resume", flush=True)
                    return run.checkpoint_of(step)
        workers.trainer.export_hf(str(run.path / "final"))
    print(f"[opd] done: metrics {run.path / 'metrics.jsonl'}, checkpoints {run.checkpoints}, model {run.path / 'final'}",
          flush=True)
    return run.path / "final"


def samples_source(workers, cfg: OPDConfig, batch, teacher, step: int, check: bool):
    """Where a step takes its samples (`opd_step`'s `ahead`): step 1's go through checks 2 and 5 first (the
    static checks passed in `check_opd`); their numbers join step 1's record as `check/...`."""
    if not (check and step == 1):
        return workers.ahead
    return FirstStepCheck(workers, cfg, batch, teacher, Check("static", {}, "", True))

