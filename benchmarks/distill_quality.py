"""After SFT, is on-policy distillation a better use of compute than more SFT on the teacher's samples?

At tiny scale, on this machine, with the project's own stages (`run_sft`, `run_opd`, `evaluate`), on two
verifiable tasks (`posttrain.eval.tasks`): `addition` (a one-token answer in 12 languages) and `chain`
(three numbers added step by step: an answer several dependent tokens long, where a student's own early
mistake changes what follows).

1. the strong teacher: the tiny `qwen3_moe` teacher, SFT'd on the tasks' train split;
2. the student: the tiny base student, SFT'd briefly on the same data: arm (a), no distillation;
3. from that student, every arm spends the same total FLOPs, counted as the OPD literature does
   (tinker-cookbook's on-policy distillation post): student training (6·N per token + attention), student
   rollouts (2·N per prompt and response token) and the teacher's work (2·N_teacher per token: prefill
   scoring of the student's samples for OPD, generation of the answers for sequence-level KD):
   (b) sequence-level KD: SFT on the teacher's greedy answers to every train prompt,
   (c) OPD, the card's sampled-token mode, (d) OPD, the recommended mode, (e) OPD top-k + tail bucket,
   and, for reference, (r) SFT on the ground-truth answers (which distillation usually does not have);
4. every model is scored on the held-out eval split (greedy accuracy) and by its reverse KL to the
   teacher on its own samples.

    python benchmarks/distill_quality.py                # the table (~1 h on 2 CPU cores; finished arms are reused)
    python benchmarks/distill_quality.py --variants     # and every option tried (the lab log; hours)
    python benchmarks/distill_quality.py --arms opd_sampled,seqkd --budget-steps 60   # a quick look
    python benchmarks/distill_quality.py --docs-only    # re-render the docs from the results
    python benchmarks/distill_quality.py --regime after-sft   # the card's regime (below; ~15 min on one core)

`--regime after-sft` measures the card's regime instead: the student is first SFT'd on the teacher's greedy
answers to the train prompts (the seqKD mixture) until its held-out accuracy plateaus (`plateau_student`: segments
of 100 steps, each a cosine cycle from lr 3e-3 to 3e-4, evaluated after each; it stops at the first segment whose
mean accuracy over the tasks gains < 2 points, or after 6), then, from that plateau and at equal total FLOPs (60
steps of the card's OPD shape), continued sequence-level KD and OPD in the card's mode (`sampled`) and the
recommended mode (`topk_jsd`, beta 0), each at the card's lr ratio (a constant lr = the plateau SFT's final lr)
and at the tiny config's schedule, two seeds each (`benchmarks/distill_arms.py`'s AFTER_SFT_ARMS). Gap closed is
measured against what is left: (arm − plateau) / (teacher − plateau). Its results are also kept in
docs/data/distill_after_sft.json, from which `--docs-only` re-renders the page.

Each arm's run directory holds its result (`arm.json`, with the spec it was run with); a rerun reuses
every arm whose spec is unchanged, so an interrupted benchmark resumes where it stopped. Writes
`docs/distillation_quality.md` (table, plot, lab log) unless --no-docs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from benchmarks.distill_arms import (  # noqa: E402
    AFTER_SFT_ARMS,
    AFTER_SFT_CONFIGS,
    ARMS,
    RECOMMENDED,
    VARIANTS,
    Arm,
)
from benchmarks.distill_report import (  # noqa: E402
    after_sft_table,
    print_table,
    save_regime,
    write_page,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--regime", choices=("from-scratch", "after-sft"), default="from-scratch",
                   help="from-scratch: every arm from a briefly SFT'd (weak) student; after-sft: from a student SFT'd on "
                        "the teacher's answers to its plateau (the card's regime)")
    p.add_argument("--work-dir", default=None,
                   help="default: runs/distill_quality (from-scratch), runs/distill_quality_after_sft (after-sft)")
    p.add_argument("--models-dir", default=str(ROOT / "models" / "tiny"),
                   help="the tiny suite (student, teacher-moe, tokenizer), built there if missing")
    p.add_argument("--tasks", default="addition,chain", help="the verifiable tasks trained on and scored")
    p.add_argument("--teacher-steps", type=int, default=400)
    p.add_argument("--student-start-steps", type=int, default=150)
    p.add_argument("--budget-steps", type=int, default=None,
                   help="the FLOPs budget of every arm: this many steps of the card's OPD shape (prompts x samples); "
                        "default 200 (from-scratch), 60 (after-sft)")
    p.add_argument("--plateau-segment-steps", type=int, default=100, help="after-sft: SFT steps between evaluations")
    p.add_argument("--plateau-max-segments", type=int, default=6, help="after-sft: the plateau SFT's cap")
    p.add_argument("--plateau-min-gain", type=float, default=0.02,
                   help="after-sft: stop once a segment gains less than this in mean accuracy over the tasks")
    p.add_argument("--opd-lr", type=float, default=1e-3)
    p.add_argument("--sft-lr", type=float, default=1e-3, help="lr of the SFT-based arms from the student start")
    p.add_argument("--prompts-per-step", type=int, default=32)
    p.add_argument("--samples-per-prompt", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--eval-limit", type=int, default=200, help="eval-split examples per task")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads of every worker and of the driver's evaluation (0: the configs' own); 1 keeps "
                        "a contended machine's OpenMP barriers from stalling (results do not depend on it)")
    p.add_argument("--arms", default="", help="comma-separated arm keys, run in that order (default: the table's arms)")
    p.add_argument("--variants", action="store_true", help="also run every variant of the lab log")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--docs-only", action="store_true",
                   help="re-render docs/ (from WORK_DIR/results.json where it exists, else from docs/data/)")
    args = p.parse_args(argv)
    after = args.regime == "after-sft"
    if args.work_dir is None:
        args.work_dir = "runs/distill_quality_after_sft" if after else "runs/distill_quality"
    if args.budget_steps is None:
        args.budget_steps = 60 if after else 200
    return args


# --------------------------------------------------------------------------------------------------
# Data: the tasks' train split as an SFT mixture and as an OPD prompt mixture
# --------------------------------------------------------------------------------------------------


def write_mixture(rows: list[tuple[str, str, str]], data_dir: Path, name: str, fmt: str) -> Path:
    """rows: (id, prompt, response or answer) → `name.jsonl` and a one-source mixture `name.yaml`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / f"{name}.jsonl", "w", encoding="utf-8") as f:
        for row_id, prompt, text in rows:
            row = ({"id": row_id, "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]}
                   if fmt == "messages" else {"id": row_id, "prompt": prompt, "answer": text})
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    spec = data_dir / f"{name}.yaml"
    spec.write_text(f"name: {name}\nseed: 0\nsources:\n  - {{name: {name}, path: {name}.jsonl, format: {fmt}, weight: 1}}\n")
    return spec


def task_mixtures(tasks: list[str], data_dir: Path) -> tuple[Path, Path, list]:
    from posttrain.eval.tasks import examples

    train = [e for task in tasks for e in examples(task, "train")]
    sft = write_mixture([(e.id, e.prompt, e.response) for e in train], data_dir, "tasks_sft", "messages")
    prompts = write_mixture([(e.id, e.prompt, e.answer) for e in train], data_dir, "tasks_opd", "prompt")
    return sft, prompts, train


def write_seqkd_mixture(teacher: Path, train_examples: list, data_dir: Path, max_new_tokens: int) -> tuple[Path, int]:
    """The teacher's greedy answers to every train prompt, as an SFT mixture; and the tokens the teacher
    processed to write them (prompt prefill + generated), for its FLOPs."""
    import torch
    from transformers import AutoTokenizer

    from posttrain.config import RolloutConfig
    from posttrain.data.chat import prompt_ids
    from posttrain.engines.hf_rollout import HFRolloutWorker

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    worker = HFRolloutWorker(str(teacher), RolloutConfig(samples_per_prompt=1, max_new_tokens=max_new_tokens, batch_size=128),
                             torch.get_num_threads())
    ids = [prompt_ids(tokenizer, [{"role": "user", "content": e.prompt}]) for e in train_examples]
    samples = worker.generate(list(enumerate(ids)), seed=0, greedy=True)
    rows = [(e.id, e.prompt, tokenizer.decode(s.response_ids, skip_special_tokens=True).strip())
            for e, s in zip(train_examples, samples)]
    teacher_tokens = sum(len(p) + len(s.response_ids) for p, s in zip(ids, samples))
    return write_mixture([r for r in rows if r[2]], data_dir, "seqkd_sft", "messages"), teacher_tokens


def mean_tokens_per_example(mixture: Path, tokenizer_path: Path) -> float:
    from transformers import AutoTokenizer

    from posttrain.data.chat import tokenize_conversation
    from posttrain.data.mixture import load_mixture_spec, read_source_rows

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    lengths = [len(tokenize_conversation(tokenizer, row["messages"]).input_ids)
               for source in load_mixture_spec(mixture).sources for row in read_source_rows(source)]
    return sum(lengths) / len(lengths)


# --------------------------------------------------------------------------------------------------
# Compute, counted as the OPD literature counts it
# --------------------------------------------------------------------------------------------------


@dataclass
class Flops:
    """FLOPs per token: the student's training (forward + backward) and forward, the teacher's forward."""

    student_train: float
    student_forward: float
    teacher_forward: float

    @classmethod
    def of(cls, student: Path, teacher: Path, seq_len: int = 64) -> "Flops":
        from transformers import AutoConfig

        from posttrain.models.params import train_flops_per_token

        s, t = (train_flops_per_token(AutoConfig.from_pretrained(p), seq_len) for p in (student, teacher))
        return cls(s, s / 3, t / 3)

    def opd(self, tokens: float) -> dict:
        """One OPD pass over `tokens` (prompt + response): rollout, teacher prefill, training."""
        return {"student_train": tokens * self.student_train, "student_rollout": tokens * self.student_forward,
                "teacher": tokens * self.teacher_forward}

    def sft(self, tokens: float, teacher_tokens: float = 0) -> dict:
        return {"student_train": tokens * self.student_train, "student_rollout": 0.0,
                "teacher": teacher_tokens * self.teacher_forward}


# --------------------------------------------------------------------------------------------------
# Stages (the project's own)
# --------------------------------------------------------------------------------------------------


THREADS = {"n": 0}  # --threads, for every stage this process starts


def threads(groups: tuple[str, ...] = ("trainer",)) -> list[str]:
    n = THREADS["n"]
    return [f"{group}.threads_per_worker={n}" for group in groups] if n else []


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def sft(model: Path, mixture: Path, out: Path, steps: int, lr: float, batch: int = 32, warmup: int = 5,
        extra: tuple[str, ...] = ()) -> dict:
    from posttrain.config import SFTConfig, load_config
    from posttrain.stages.sft import run_sft

    started = time.perf_counter()
    cfg = load_config(SFTConfig, ROOT / "configs/tiny/sft.yaml", [
        f"model.path={model}", "model.build_tiny_if_missing=false", f"data.mixture={mixture}",
        f"trainer.max_steps={steps}", f"trainer.global_batch_size={batch}", f"optim.lr={lr}", f"optim.min_lr={lr / 10}",
        f"optim.warmup_steps={warmup}", f"output_dir={out}", f"checkpoint.every={steps}", "checkpoint.keep=1",
        "logging.progress_bar=false", "logging.tensorboard=false", "logging.every=50", *threads(), *extra])
    final = run_sft(cfg, overwrite=True)
    return {"model": str(final), "tokens": sum(r["tokens"] for r in records(out)), "steps": steps,
            "wall_s": time.perf_counter() - started}


def opd(student: Path, teacher: Path, mixture: Path, out: Path, steps: int, args, overrides: tuple[str, ...],
        tasks: list[str]) -> dict:
    from posttrain.config import OPDConfig, TeacherStage, load_config
    from posttrain.stages.opd.loop import run_opd

    started = time.perf_counter()
    cfg = load_config(OPDConfig, ROOT / "configs/tiny/opd.yaml", [
        f"model.path={student}", "model.build_tiny_if_missing=false", f"data.mixture={mixture}",
        # The benchmark's base schedule is the card's (a constant lr, no warm-up), pinned here rather than read from
        # the tiny config, whose shipped schedule is an arm of its own (RECOMMENDED's overrides).
        f"optim.lr={args.opd_lr}", "optim.schedule=constant", "optim.warmup_steps=0",
        f"rollout.prompts_per_step={args.prompts_per_step}",
        f"rollout.samples_per_prompt={args.samples_per_prompt}", f"rollout.max_new_tokens={args.max_new_tokens}",
        f"output_dir={out}", f"eval.every={max(1, steps // 4)}", f"eval.limit={in_loop_eval_limit(args)}", f"eval.tasks=[{','.join(tasks)}]",
        f"eval.max_new_tokens={args.max_new_tokens}", f"checkpoint.every={steps}", "checkpoint.keep=1",
        "logging.progress_bar=false", "logging.tensorboard=false", "logging.every=25", *threads(("trainer", "rollout", "teacher")), *overrides])
    cfg.teachers = [TeacherStage(str(teacher), steps)]
    final = run_opd(cfg, overwrite=True)
    rows = records(out)
    trained = [r for r in rows if "tokens" in r]  # the in-loop evaluation at step 0 has a row of its own
    return {"model": str(final), "tokens": sum(r["tokens"] for r in trained), "steps": len(trained),
            "wall_s": time.perf_counter() - started, "curve": curve(rows)}


def in_loop_eval_limit(args) -> int:
    """The OPD runs' in-loop evaluation: 64 prompts per task from scratch; after SFT the final evaluation's own
    prompts (`--eval-limit`), so the plot's in-loop points and end points are the same measurement."""
    return args.eval_limit if args.regime == "after-sft" else 64


def curve(rows: list[dict]) -> list[dict]:
    """Per step, what the plot and the lab log read: the health metrics and the in-loop evaluations."""
    keep = ("step", "tokens", "reverse_kl", "reverse_kl_topk", "loss", "grad_norm", "grad_clipped", "clip_frac",
            "adv_mean", "adv_std", "adv_min", "response_len")
    return [{k: r[k] for k in r if k in keep or k.startswith("eval/") and not k.endswith("_len")} for r in rows]


# --------------------------------------------------------------------------------------------------
# The arms, each cached under its run directory with the spec it was run with
# --------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What every arm starts from and is measured against."""

    args: argparse.Namespace
    work: Path
    tasks: list[str]
    teacher: Path
    student: Path
    sft_mix: Path
    opd_mix: Path
    train_examples: list
    flops: Flops
    budget: float  # total FLOPs of every arm
    opd_tokens_per_prompt: float  # prompt + response tokens of one sample, at the student start
    # after-sft: the teacher's answers the plateau was SFT'd on (already paid for: continued seqKD reuses them)
    seqkd_mix: Path | None = None


def opd_steps(setup: Setup, overrides: tuple[str, ...]) -> int:
    """Steps of an OPD arm whose (prompts x samples) shape may differ from the card's, at the budget."""
    shape = {"rollout.prompts_per_step": setup.args.prompts_per_step, "rollout.samples_per_prompt": setup.args.samples_per_prompt}
    for item in overrides:
        key, _, value = item.partition("=")
        if key in shape:
            shape[key] = int(value)
    per_step = setup.flops.opd(shape["rollout.prompts_per_step"] * shape["rollout.samples_per_prompt"] * setup.opd_tokens_per_prompt)
    return max(1, round(setup.budget / sum(per_step.values())))


def run_arm(arm: Arm, setup: Setup, log) -> dict:
    """Train and evaluate one arm, or reuse its earlier result when the spec is the same."""
    from posttrain.eval.run import evaluate

    # What the arm's result depends on (not its name): arms that train alike share one run.
    spec = {"kind": arm.kind, "overrides": list(arm.overrides), "budget": setup.budget, "teacher": str(setup.teacher),
            "student": str(setup.student),
            "args": {k: v for k, v in vars(setup.args).items() if k not in ("arms", "variants", "no_docs", "docs_only", "threads")}}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    out = setup.work / "arms" / f"{arm.kind}-{digest}"
    cached = out / "arm.json"
    if cached.exists():
        log(f"{arm.label}: reused ({cached})")
        return json.loads(cached.read_text())
    log(f"{arm.label}: training")
    run, flops = train_arm(arm, setup, out / "run")
    log(f"{arm.label}: {run['steps']} steps, {sum(flops.values()) / setup.budget:.2f} x budget; evaluating")
    result = evaluate(run["model"], setup.tasks, limit=setup.args.eval_limit, teacher=str(setup.teacher), seed=0,
                      max_new_tokens=setup.args.max_new_tokens)
    entry = {"digest": digest, "spec": spec, "run": run, "flops": flops, "eval": result}
    out.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(entry, indent=1, ensure_ascii=False, default=str))
    return entry


def train_arm(arm: Arm, setup: Setup, out: Path) -> tuple[dict, dict]:
    args, f = setup.args, setup.flops
    if arm.kind == "opd":
        run = opd(setup.student, setup.teacher, setup.opd_mix, out, opd_steps(setup, arm.overrides), args,
                  arm.overrides, setup.tasks)
        return run, f.opd(run["tokens"])
    batch = 32
    if arm.kind == "seqkd" and setup.seqkd_mix is not None:
        # Continued seqKD: the answers exist (the plateau was trained on them), so no teacher FLOPs; the SFT's seed
        # is the data order's (the mixture's), which `trainer.seed` does not set.
        seed = next((int(o.partition("=")[2]) for o in arm.overrides if o.startswith("trainer.seed=")), 0)
        mixture, teacher_tokens = reseeded(setup.seqkd_mix, seed), 0
    elif arm.kind == "seqkd":
        mixture, teacher_tokens = write_seqkd_mixture(setup.teacher, setup.train_examples, out.parent / "data",
                                                      args.max_new_tokens)
    else:
        mixture, teacher_tokens = setup.sft_mix, 0
    per_step = batch * mean_tokens_per_example(mixture, setup.student)
    left = setup.budget - sum(f.sft(0, teacher_tokens).values())
    steps = max(1, round(left / sum(f.sft(per_step).values())))
    constant = ("optim.schedule=constant",) if setup.seqkd_mix is not None else ()  # after-sft: the SFT's final lr
    run = sft(setup.student, mixture, out, steps, lr=args.sft_lr, batch=batch, warmup=0, extra=(*constant, *arm.overrides))
    return run, f.sft(run["tokens"], teacher_tokens)


def reseeded(mixture: Path, seed: int) -> Path:
    """The same one-source mixture with its data order's seed set to `seed` (a sibling yaml)."""
    if seed == 0:
        return mixture
    path = mixture.with_name(f"{mixture.stem}_seed{seed}.yaml")
    path.write_text(mixture.read_text().replace("seed: 0\n", f"seed: {seed}\n", 1))
    return path


def seqkd_data(teacher: Path, train_examples: list, work: Path, max_new_tokens: int, log) -> tuple[Path, int]:
    """`write_seqkd_mixture`, kept under WORK_DIR/seqkd for the next run (the teacher's greedy answers)."""
    out = work / "seqkd"
    spec = {"teacher": str(teacher), "examples": len(train_examples), "max_new_tokens": max_new_tokens}
    cached = out / "seqkd.json"
    if cached.exists() and json.loads(cached.read_text())["spec"] == spec:
        return out / "seqkd_sft.yaml", json.loads(cached.read_text())["teacher_tokens"]
    log(f"seqKD data: the teacher's greedy answers to the {len(train_examples)} train prompts")
    mixture, teacher_tokens = write_seqkd_mixture(teacher, train_examples, out, max_new_tokens)
    cached.write_text(json.dumps({"spec": spec, "teacher_tokens": teacher_tokens}))
    return mixture, teacher_tokens


PLATEAU_LR, PLATEAU_MIN_LR = 3e-3, 3e-4  # each plateau segment: warm-up 5 steps, cosine from 3e-3 to 3e-4


def plateau_student(model: Path, mixture: Path, args, work: Path, tasks: list[str], log) -> dict:
    """The card's SFT stage: the student SFT'd on the teacher's answers until its held-out accuracy plateaus.

    Stopping rule: SFT in segments of `--plateau-segment-steps` (100) steps, each a fresh cosine cycle from lr 3e-3
    (5 warm-up steps) to 3e-4 (warm restarts, so every evaluated model sits at the bottom of a decay, and the SFT's
    final lr is 3e-4), each segment's data in another order (mixture seed = the segment's index); after each, greedy
    accuracy on the held-out eval split (`--eval-limit` per task); stop after the first segment whose mean accuracy
    over the tasks gains less than `--plateau-min-gain` (2 points) on the previous one, or after
    `--plateau-max-segments` (6). The plateau student is the last segment's model. Cached like `base_model`."""
    from posttrain.eval.run import evaluate

    out = work / "plateau"
    spec = {"model": str(model), "mixture": (mixture.parent / "seqkd_sft.jsonl").stat().st_size, "tasks": tasks,
            "segment_steps": args.plateau_segment_steps, "max_segments": args.plateau_max_segments,
            "min_gain": args.plateau_min_gain, "lr": [PLATEAU_LR, PLATEAU_MIN_LR], "eval_limit": args.eval_limit,
            "max_new_tokens": args.max_new_tokens}
    cached = out / "base.json"
    if cached.exists() and json.loads(cached.read_text())["spec"] == spec:
        return json.loads(cached.read_text())

    def score(path) -> dict:
        result = evaluate(str(path), tasks, limit=args.eval_limit, seed=0, max_new_tokens=args.max_new_tokens)
        return {t: result["tasks"][t]["accuracy"] for t in tasks}

    started = time.perf_counter()
    segments = [{"segment": 0, "steps": 0, "tokens": 0, "accuracy": score(model)}]
    log(f"plateau: {model.name} before SFT: {segments[0]['accuracy']}")
    mean = lambda seg: sum(seg["accuracy"].values()) / len(tasks)  # noqa: E731
    current = model
    for k in range(1, args.plateau_max_segments + 1):
        run = sft(current, reseeded(mixture, k), out / f"segment{k}", args.plateau_segment_steps, lr=PLATEAU_LR,
                  extra=(f"optim.min_lr={PLATEAU_MIN_LR}",))
        current = Path(run["model"])
        segments.append({"segment": k, "steps": segments[-1]["steps"] + run["steps"],
                         "tokens": segments[-1]["tokens"] + run["tokens"], "accuracy": score(current),
                         "model": str(current), "wall_s": run["wall_s"]})
        gain = mean(segments[-1]) - mean(segments[-2])
        log(f"plateau: segment {k} ({segments[-1]['steps']} steps): {segments[-1]['accuracy']}, mean gain {gain:+.3f}")
        if gain < args.plateau_min_gain:
            break
    entry = {"spec": spec, "model": str(current), "steps": segments[-1]["steps"], "tokens": segments[-1]["tokens"],
             "final_lr": PLATEAU_MIN_LR, "segments": segments, "stopped": "plateau" if gain < args.plateau_min_gain
             else "cap", "wall_s": time.perf_counter() - started}
    cached.write_text(json.dumps(entry, indent=1))
    return entry


def base_model(name: str, model: Path, setup_args, work: Path, sft_mix: Path, steps: int, log) -> Path:
    """The SFT'd teacher or student start (cached like the arms: reused when the same)."""
    out = work / name
    spec = {"model": str(model), "steps": steps, "tasks": setup_args.tasks}
    cached = out / "base.json"
    if cached.exists() and json.loads(cached.read_text())["spec"] == spec:
        return Path(json.loads(cached.read_text())["model"])
    log(f"{name}: {steps} SFT steps of {model.name} on the tasks' train split")
    run = sft(model, sft_mix, out / "run", steps, lr=3e-3)
    cached.write_text(json.dumps({"spec": spec, "model": run["model"], "wall_s": run["wall_s"]}))
    return Path(run["model"])


# --------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    if args.docs_only:
        if (work / "results.json").exists():
            save_regime(json.loads((work / "results.json").read_text()))
        write_page(ROOT / "docs")
        return 0
    import ray

    from posttrain.config import RayConfig
    from posttrain.infra.cluster import init_ray
    from posttrain.infra.runlog import quiet_library_progress
    from posttrain.models.tiny import build_tiny_suite

    quiet_library_progress()
    if args.threads:
        import torch

        THREADS["n"] = args.threads
        torch.set_num_threads(args.threads)
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    log = lambda msg: print(f"[distill_quality {time.perf_counter() - began:6.0f}s] {msg}", flush=True)  # noqa: E731
    tasks = [t for t in args.tasks.split(",") if t]
    models = build_tiny_suite(Path(args.models_dir).resolve())
    sft_mix, opd_mix, train_examples = task_mixtures(tasks, work / "data")
    init_ray(RayConfig())
    if args.regime == "after-sft":
        return after_sft(args, work, tasks, models, sft_mix, opd_mix, train_examples, log, began)
    try:
        teacher = base_model("teacher", models["teacher-moe"], args, work, sft_mix, args.teacher_steps, log)
        student = base_model("student_start", models["student"], args, work, sft_mix, args.student_start_steps, log)
        setup = make_setup(args, work, tasks, teacher, student, sft_mix, opd_mix, train_examples)
        chosen = choose_arms(args)
        results = {"arms": {a.key: run_arm(a, setup, log) for a in chosen}}
    finally:
        ray.shutdown()
    results["teacher"] = cached_eval(work / "teacher", teacher, None, args, tasks, log)
    results["start"] = cached_eval(work / "student_start", student, teacher, args, tasks, log)
    summary = {"regime": "from-scratch", "args": vars(args), "tasks": tasks, "budget": setup.budget, "flops_per_token": asdict(setup.flops),
               "recommended": RECOMMENDED, "labels": {a.key: a.label for a in ARMS + VARIANTS},
               "variant_keys": [a.key for a in VARIANTS], "total_wall_s": time.perf_counter() - began, **results}
    return finish(summary, work, args, print_table, log)


def finish(summary: dict, work: Path, args, table, log) -> int:
    """Either regime's end: WORK_DIR/results.json (a partial run adds its arms to the last full one's), the
    table printed, and the page re-rendered unless --no-docs."""
    path = work / "results.json"
    if path.exists() and args.arms:
        summary["arms"] = {**json.loads(path.read_text()).get("arms", {}), **summary["arms"]}
    path.write_text(json.dumps(summary, indent=1, ensure_ascii=False, default=str))
    print("\n" + table(summary))
    if not args.no_docs:
        save_regime(summary)
        write_page(ROOT / "docs")
    log(f"done; results in {path}")
    return 0


def after_sft(args, work: Path, tasks: list[str], models: dict, sft_mix: Path, opd_mix: Path, train_examples: list,
              log, began: float) -> int:
    """The card's regime: teacher → plateau student (SFT on the teacher's answers) → the AFTER_SFT_ARMS at equal FLOPs."""
    import ray

    try:
        teacher = base_model("teacher", models["teacher-moe"], args, work, sft_mix, args.teacher_steps, log)
        seqkd_mix, seqkd_teacher_tokens = seqkd_data(teacher, train_examples, work, args.max_new_tokens, log)
        plateau = plateau_student(models["student"], seqkd_mix, args, work, tasks, log)
        # The card's lr ratio: OPD (and continued seqKD) at a constant lr = the plateau SFT's final lr.
        args.opd_lr = args.sft_lr = plateau["final_lr"]
        student = Path(plateau["model"])
        setup = make_setup(args, work, tasks, teacher, student, seqkd_mix, opd_mix, train_examples)
        setup.seqkd_mix = seqkd_mix
        chosen = [a for a in AFTER_SFT_ARMS if not args.arms or a.key in args.arms.split(",")]
        results = {"arms": {a.key: run_arm(a, setup, log) for a in chosen}}
    finally:
        ray.shutdown()
    results["teacher"] = cached_eval(work / "teacher", teacher, None, args, tasks, log)
    results["start"] = cached_eval(work / "plateau", student, teacher, args, tasks, log)
    results["gradients"] = plateau_gradients(work, log)
    suite = Path(args.models_dir).resolve()
    summary = {"regime": "after-sft", "args": vars(args), "tasks": tasks, "budget": setup.budget,
               "flops_per_token": asdict(setup.flops), "labels": {a.key: a.label for a in AFTER_SFT_ARMS},
               "configs": [list(c[:3]) for c in AFTER_SFT_CONFIGS],
               "plateau": {k: v for k, v in plateau.items() if k != "spec"},
               "seqkd_teacher_tokens": seqkd_teacher_tokens,
               "suite": {"dir": str(suite), "tiny_suite.json": json.loads((suite / "tiny_suite.json").read_text())
                         if (suite / "tiny_suite.json").exists() else None},
               "date": time.strftime("%Y-%m-%d"), "total_wall_s": time.perf_counter() - began, **results}
    return finish(summary, work, args, after_sft_table, log)


def plateau_gradients(work: Path, log) -> dict | None:
    """`benchmarks/distill_gradients.py` at the plateau start (the estimators' cosine with the exact reverse KL's
    gradient), kept in WORK_DIR/gradients.json; in a subprocess, at the benchmark's thread count."""
    import subprocess

    path = work / "gradients.json"
    spec = json.loads((work / "plateau" / "base.json").read_text())["model"]
    if path.exists() and json.loads(path.read_text()).get("student") == spec:
        return json.loads(path.read_text())
    log("gradients: the estimators' cosine at the plateau start")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "distill_gradients.py"), "--work-dir", str(work),
           "--student", "plateau", "--json", str(path)] + (["--threads", str(THREADS["n"])] if THREADS["n"] else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    print(done.stdout[-3000:], done.stderr[-3000:] if done.returncode else "", flush=True)
    return json.loads(path.read_text()) if done.returncode == 0 and path.exists() else None


def cached_eval(where: Path, model: Path, teacher: Path | None, args, tasks: list[str], log) -> dict:
    """`evaluate` of the teacher or the student start, kept beside it for the next run."""
    from posttrain.eval.run import evaluate

    spec = {"model": str(model), "teacher": str(teacher), "tasks": tasks, "limit": args.eval_limit,
            "max_new_tokens": args.max_new_tokens}
    path = where / "eval.json"
    if path.exists() and json.loads(path.read_text())["spec"] == spec:
        return json.loads(path.read_text())["result"]
    log(f"evaluating {where.name}")
    result = evaluate(str(model), tasks, limit=args.eval_limit, teacher=None if teacher is None else str(teacher), seed=0,
                      max_new_tokens=args.max_new_tokens)
    path.write_text(json.dumps({"spec": spec, "result": result}))
    return result


def choose_arms(args) -> list[Arm]:
    """The table's arms (and the variants with --variants), or those --arms names, in its order."""
    if not args.arms:
        return ARMS + (VARIANTS if args.variants else [])
    known = {a.key: a for a in ARMS + VARIANTS}
    unknown = [k for k in args.arms.split(",") if k and k not in known and k != "none"]
    if unknown:
        raise SystemExit(f"--arms: unknown arm(s) {unknown}; arms: {', '.join(known)}")
    return [known[k] for k in args.arms.split(",") if k in known]


def make_setup(args, work: Path, tasks: list[str], teacher: Path, student: Path, sft_mix: Path, opd_mix: Path,
               train_examples: list) -> Setup:
    """The FLOPs budget: `--budget-steps` steps of the card's OPD shape, each sample as long as a train
    example's prompt + reference answer (what the SFT'd student start writes, to a few tokens)."""
    flops = Flops.of(student, teacher)
    tokens_per_sample = mean_tokens_per_example(sft_mix, student)
    per_step = flops.opd(args.prompts_per_step * args.samples_per_prompt * tokens_per_sample)
    return Setup(args, work, tasks, teacher, student, sft_mix, opd_mix, train_examples, flops,
                 args.budget_steps * sum(per_step.values()), tokens_per_sample)


if __name__ == "__main__":
    sys.exit(main())
