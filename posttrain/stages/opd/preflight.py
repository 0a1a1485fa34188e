"""`posttrain check`: the OPD wiring measured on the run's own engines before a GPU-hour is spent.

The ways an OPD run goes silently wrong (from slime's, verl's, NeMo-RL's, TRL's and tinker-cookbook's
trackers) train without an error and give a worse model weeks later: the sampler's log-probs differ from
the trainer's on the same tokens (kernels, dtypes, processed vs raw log-probs, MoE routing), so the
importance ratio is off from step 1; the teacher scores with another template, offset or temperature;
teacher replicas disagree; a weight sync leaves an engine on stale weights; a padded vocabulary shifts
ids. Each check below starts the run's real groups (its config, backends and placement) on a handful of
its own prompts and measures one number against a tolerance set by the dtype:

1. self-distillation: the student, scored as its own teacher through the teacher path, against the
   trainer's log-probs of the same tokens: a per-token reverse KL of ~0 (template, offset, temperature);
2. sampler vs trainer: the rollout's log-probs of its samples against the trainer's recomputation,
   before any update (mean and max |Δ log p|, the importance ratio's spread);
3. teacher replicas: every replica scores the same sequences alike (and, where both backends run, vLLM's
   teacher agrees with transformers');
4. after one sync of perturbed weights, the rollout's log-probs are the trainer's again;
5. the static checks (template, end-of-turn ids, vocabulary and padding: `stages.opd.checks`).

`posttrain opd` runs 2 and 5 on its first step's own samples, before it trains on them, and logs the
numbers with step 1's record (`check/...`; `FirstStepCheck`; `--no-check` turns it off). Written by hand:
none of those projects checks this before training (the closest is an unmerged self-test in one of them).
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from posttrain.config import OPDConfig
from posttrain.data.packing import pack
from posttrain.data.prompts import OPDPrompts, Prompt
from posttrain.engines.backends import BACKENDS
from posttrain.engines.group import TeacherGroup
from posttrain.engines.sizing import teacher_size, trainer_dtype
from posttrain.engines.vllm import cpu_problem
from posttrain.infra import faults
from posttrain.stages.driver import start_ray
from posttrain.stages.opd.checks import TeacherMismatch, check_opd
from posttrain.stages.opd.step import Generated, draw_samples, generate_and_score, sequences
from posttrain.stages.opd.workers import OPDWorkers

# Per dtype: (mean |Δ log p| per token, max |Δ log p|) two correct paths stay within. float32: the same
# weights through different kernels (packed vs padded, vLLM vs transformers) agree to ~1e-5 here; bf16
# kernels differ by ~1e-2 on average and by up to a nat on a rare token (slime's and verl's reports).
TOLERANCES = {"float32": (1e-3, 2e-2), "bfloat16": (5e-2, 2.0)}
CHECK_PROMPTS = 4
PERTURBATION = 0.2  # noise per weight, in units of its tensor's standard deviation: moves log-probs past any tolerance
DYNAMIC = ("sampler_vs_trainer", "teacher_replicas", "self_distillation", "after_sync")

MEANINGS = {
    "self_distillation": "the teacher path scores another distribution than the student's: a chat template, a "
                         "one-token offset between prompt and response, or a temperature in scoring; look at how "
                         "the teacher builds its inputs (engines/*_teacher.py) and teacher.dtype",
    "sampler_vs_trainer": "the importance ratio is off from step 1: a sampling temperature or top-p other than 1, "
                          "processed vs raw log-probs, another dtype or kernel in the rollout engine, MoE routing "
                          "that differs; look at rollout.temperature/top_p, model.dtype vs deepspeed.bf16",
    "teacher_replicas": "teacher replicas (or backends) disagree on the same tokens: a replica loaded other weights, "
                        "another dtype, or a backend reads the model differently",
    "after_sync": "the rollout engine is not on the trainer's weights after a sync: a stale engine, names the "
                  "engine skipped, a tied or fused weight left out",
    "static": "the teacher reads the student's tokens differently (vocabulary, special or end-of-turn ids, chat "
              "template); the message says which",
}


@dataclass
class Check:
    name: str
    measured: dict
    tolerance: str
    passed: bool | None  # None: not run (and why in `measured`)

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "not run" if self.passed is None else "FAIL"


def tolerance(cfg: OPDConfig) -> tuple[float, float]:
    """The looser of the dtypes any side computes in (the trainer's, the rollout's, the teacher's)."""
    dtypes = {cfg.model.dtype, cfg.teacher.dtype, trainer_dtype(cfg)}
    return TOLERANCES["bfloat16" if "bfloat16" in dtypes else "float32"]


def gaps(a_N: torch.Tensor, b_N: torch.Tensor) -> dict:
    """|a − b| per token: mean and max, and the spread of exp(a − b) (an importance ratio)."""
    diff_N = (a_N - b_N).double()
    return {"mean_abs": float(diff_N.abs().mean()), "max_abs": float(diff_N.abs().max()),
            "ratio_std": float(diff_N.exp().std()) if diff_N.numel() > 1 else 0.0, "tokens": int(diff_N.numel())}


def within(measured: dict, tol: tuple[float, float]) -> bool:
    return measured["mean_abs"] <= tol[0] and measured["max_abs"] <= tol[1]


def limits(tol: tuple[float, float]) -> str:
    return f"mean <= {tol[0]:g}, max <= {tol[1]:g}"


def recompute(trainer, prompts: list[Prompt], got: Generated, cfg: OPDConfig, **extra) -> dict[str, torch.Tensor]:
    """The trainer's log-probs of the samples' response tokens, with the sampler's (and `extra`: name -> one
    [R] tensor per sample) aligned token by token, over every sample."""
    examples = []
    for i, sample in enumerate(got.samples):
        prompt = prompts[sample.prompt_index].input_ids
        values = {"sampler_logprobs": torch.tensor(sample.sampler_logprobs), **{k: v[i] for k, v in extra.items()}}
        values = {k: torch.cat([torch.zeros(len(prompt), dtype=v.dtype), v]) for k, v in values.items()}
        examples.append((prompt + sample.response_ids, [0] * len(prompt) + [1] * len(sample.response_ids), values))
    parts = trainer.target_logprobs(pack(examples, cfg.data.pack_tokens), ("sampler_logprobs", *extra))
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def sampler_vs_trainer(tokens: dict[str, torch.Tensor], tol) -> Check:
    measured = gaps(tokens["trainer"], tokens["sampler_logprobs"])
    return Check("sampler_vs_trainer", measured, limits(tol), within(measured, tol))


def self_distillation(workers, cfg: OPDConfig, prompts, got: Generated, tol) -> Check:
    """The student through the teacher path (the configured teacher backend and dtype) against the trainer."""
    student = TeacherGroup(cfg.model.path, cfg.teacher, cfg.model.trust_remote_code,
                           share=workers.colocation and workers.colocation.teacher, size=teacher_size(cfg))
    scored = sequences(prompts, got.samples)
    if faults.fires("shift_teacher_input", 1):  # the test fault: the teacher path sees the boundary one token late
        scored = [(p + r[:1], r[1:] + r[-1:]) for p, r in scored]
    try:
        scores = student.score(scored)
    finally:
        student.close()
    tokens = recompute(workers.trainer, prompts, got, cfg, self_teacher=[s.logprobs for s in scores])
    measured = gaps(tokens["trainer"], tokens["self_teacher"])
    measured["reverse_kl"] = float((tokens["trainer"] - tokens["self_teacher"]).double().mean())
    return Check("self_distillation", measured, limits(tol), within(measured, tol))


def teacher_replicas(workers, cfg: OPDConfig, prompts, got: Generated, tol, compare_backends: bool) -> Check:
    """Every replica of the first teacher scores the same sequences; where the other backend runs too, it as well."""
    import ray

    scored = sequences(prompts, got.samples)
    teacher = workers.teacher_for(0)
    if faults.fires("perturb_teacher_replica", 1) and len(teacher.workers) > 1:  # the break-it test's fault
        ray.get(teacher.workers[-1].perturb.remote(0.05))
    with teacher.working():
        per_replica = ray.get([w.score.remote(scored) for w in teacher.workers])
    reference = torch.cat([s.logprobs for s in per_replica[0]])
    compared = {f"replica {i}": torch.cat([s.logprobs for s in scores]) for i, scores in enumerate(per_replica) if i}
    other = other_backend(cfg) if compare_backends else ""
    if other:
        workers.teacher.close()
        workers.teacher, workers.teacher_index = None, None
        group = TeacherGroup(cfg.teachers[0].path, cfg.teacher, cfg.model.trust_remote_code,
                             size=teacher_size(cfg), backend_name=other)
        try:
            compared[f"backend {other}"] = torch.cat([s.logprobs for s in group.score(scored)])
        finally:
            group.close()
    if not compared:
        return Check("teacher_replicas", {"replicas": 1, "note": "one replica and one backend: nothing to compare"},
                     limits(tol), True)
    per = {name: gaps(values, reference) for name, values in compared.items()}
    worst = max(per.values(), key=lambda m: m["max_abs"])
    measured = {"replicas": len(per_replica), **worst, "worst": max(per, key=lambda n: per[n]["max_abs"])}
    return Check("teacher_replicas", measured, limits(tol),
                 all(within(m, tol) for m in per.values()))


def other_backend(cfg: OPDConfig) -> str:
    """The teacher backend besides the configured one that can run here ('' where none)."""
    configured = cfg.teachers[0].backend or cfg.teacher.backend
    return next((name for name in BACKENDS if name != configured and runs_here(name, cfg)), "")


def runs_here(backend: str, cfg: OPDConfig) -> bool:
    """vLLM: installed, and on a CPU able to run the first teacher (`engines.vllm.cpu_problem`); hf: always."""
    if backend != "vllm":
        return True
    if importlib.util.find_spec("vllm") is None:
        return False
    return bool(cfg.teacher.gpus_per_worker) or not cpu_problem(cfg.teachers[0].path, cfg.teacher.dtype,
                                                                cfg.model.trust_remote_code)


def after_sync(workers, cfg: OPDConfig, prompts, before: dict[str, torch.Tensor], first: Generated, tol) -> Check:
    """Perturb the trainer's weights, sync, sample again: the rollout's log-probs are the trainer's."""
    workers.trainer.perturb(PERTURBATION, seed=cfg.trainer.seed)
    moved = gaps(recompute(workers.trainer, prompts, first, cfg)["trainer"], before["trainer"])["mean_abs"]
    workers.rollout.update_weights()
    again = Generated(draw_samples(2, prompts, workers.rollout, cfg), [], 0.0, 0.0)
    tokens = recompute(workers.trainer, prompts, again, cfg)
    measured = {**gaps(tokens["trainer"], tokens["sampler_logprobs"]), "perturbation_moved": moved}
    # The check means something only if the perturbation moved the log-probs well past the tolerance.
    return Check("after_sync", measured, f"{limits(tol)}; moved > {3 * tol[0]:g}",
                 within(measured, tol) and moved > 3 * tol[0])


def run_checks(workers, cfg: OPDConfig, prompts: list[Prompt], static: Check, compare_backends: bool = True) -> list[Check]:
    """Checks 2, 1, 3, 4 on the started groups (5, the static one, was run before they started)."""
    tol = tolerance(cfg)
    first = generate_and_score(1, prompts, workers.rollout, workers.teacher_for(0), cfg)
    before = recompute(workers.trainer, prompts, first, cfg)
    checks = [static, sampler_vs_trainer(before, tol)]
    checks.append(teacher_replicas(workers, cfg, prompts, first, tol, compare_backends))
    checks.append(self_distillation(workers, cfg, prompts, first, tol))
    checks.append(after_sync(workers, cfg, prompts, before, first, tol))
    return checks


def table(checks: list[Check]) -> str:
    lines = ["| check | measured | tolerance | verdict |", "|---|---|---|---|"]
    for c in checks:
        shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in c.measured.items())
        lines.append(f"| {c.name} | {shown} | {c.tolerance} | {c.verdict} |")
    for c in checks:
        if c.passed is False:
            lines.append(f"\n{c.name} failed: {MEANINGS[c.name]}")
    return "\n".join(lines)


def write(checks: list[Check], output_dir: Path, seconds: float) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "check.json"
    record = {"passed": all(c.passed is not False for c in checks), "seconds": round(seconds, 1),
              "checks": [{**asdict(c), "verdict": c.verdict, "meaning": MEANINGS[c.name]} for c in checks]}
    path.write_text(json.dumps(record, indent=2))
    return path


def first_step_metrics(tokens: dict[str, torch.Tensor], static: Check, tol) -> dict:
    """Checks 2 and 5 as metrics of `posttrain opd`'s first step."""
    check = sampler_vs_trainer(tokens, tol)
    return {"check/sampler_trainer_mean_abs": check.measured["mean_abs"],
            "check/sampler_trainer_max_abs": check.measured["max_abs"],
            "check/ratio_std": check.measured["ratio_std"], "check/sampler_trainer_pass": bool(check.passed),
            "check/static_pass": bool(static.passed)}


def static_check(cfg: OPDConfig):
    """Check 5 (`stages.opd.checks.check_opd`): (its row, the student's tokenizer or None where it failed)."""
    what = "one vocabulary (and padding), the same special and end-of-turn ids, the same chat template"
    try:
        tokenizer, _ = check_opd(cfg)
    except TeacherMismatch as e:
        return Check("static", {"error": str(e)}, what, False), None
    return Check("static", {"teachers": len(cfg.teachers)}, what, True), tokenizer


def run_check(cfg: OPDConfig, ray_address: str | None = None, compare_backends: bool = True) -> int:
    """`posttrain check`: the table, check.json in the output directory; 0 only when every check passed."""
    started = time.perf_counter()
    static, tokenizer = static_check(cfg)
    if static.passed:
        prompts = OPDPrompts(cfg.data, tokenizer).batch(0, CHECK_PROMPTS)
        start_ray(cfg.ray, cfg.cluster, ray_address)
        with OPDWorkers(cfg, 1, tokenizer.pad_token_id) as workers:
            checks = run_checks(workers, cfg, prompts, static, compare_backends)
    else:
        checks = [static] + [Check(name, {"reason": "the static check failed first"}, "", None) for name in DYNAMIC]
    seconds = time.perf_counter() - started
    print(table(checks), flush=True)
    path = write(checks, Path(cfg.output_dir), seconds)
    passed = all(c.passed is not False for c in checks)
    print(f"[check] {'every check passed' if passed else 'FAILED'} in {seconds:.0f} s; {path}", flush=True)
    return 0 if passed else 1


class FirstStepCheck:
    """`posttrain opd`'s first step, seen through checks 2 and 5 before it trains: stands where `opd_step`
    takes its samples (`ahead`), hands them on unchanged, and keeps the numbers for step 1's record."""

    def __init__(self, workers, cfg: OPDConfig, prompts: list[Prompt], teacher, static: Check):
        self.workers, self.cfg, self.prompts, self.teacher, self.static = workers, cfg, prompts, teacher, static
        self.check_metrics: dict = {}

    def take(self, step: int) -> Generated:
        ahead = self.workers.ahead
        got = ahead.take(step) if ahead else generate_and_score(step, self.prompts, self.workers.rollout, self.teacher,
                                                                 self.cfg)
        tokens = recompute(self.workers.trainer, self.prompts, got, self.cfg)
        self.check_metrics = first_step_metrics(tokens, self.static, tolerance(self.cfg))
        return got

    def sync(self, update) -> None:
        self.workers.ahead.sync(update) if self.workers.ahead else update()
