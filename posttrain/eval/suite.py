"""A benchmark suite (`configs/marco_mini/eval.yaml`: the card's benchmarks) run through lm-evaluation-harness,
and the result table: benchmark, our score, the card's, the difference; printed, and written as JSON and
markdown (`harness_eval.json`, `harness_eval.md`) into the output directory, where `posttrain report` finds it.

`--tasks a,b` runs harness tasks the same way, as a suite of benchmarks without card scores.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.config import ConfigError, read_config_yaml
from posttrain.engines.sizing import EngineSize
from posttrain.eval import harness
from posttrain.models.locate import check_model_dir

CARD_SUITE = Path(__file__).resolve().parents[2] / "configs" / "marco_mini" / "eval.yaml"
RESULT_JSON, RESULT_MD = "harness_eval.json", "harness_eval.md"


@dataclass(frozen=True)
class Benchmark:
    name: str
    tasks: tuple[str, ...]  # harness tasks; empty: the harness lacks it (`reason`)
    metric: str | None = None  # the harness's key ('acc,none'); None: the task's first
    shots: int | None = None  # None: the task's own
    scoring: str = "acc@1"  # as the card states it: acc@1 | avg@k
    runs: int = 1  # sampled runs averaged (avg@k on a generative task); 1: one greedy run
    section: str = ""
    card: dict = field(default_factory=dict)  # model -> the card's score (percent)
    reason: str = ""


@dataclass(frozen=True)
class Suite:
    benchmarks: list[Benchmark]
    card_model: str = ""
    baselines: tuple[str, ...] = ()
    engine: dict = field(default_factory=dict)
    chat: bool = True
    sampling: dict = field(default_factory=dict)
    max_gen_toks: int | None = None

    def size(self, tensor_parallel: int | None = None, dtype: str | None = None,
             max_model_len: int | None = None) -> EngineSize:
        """The vLLM engine's size: the suite's `engine` section, with the command line's values over it."""
        e = self.engine
        return EngineSize(tensor_parallel=tensor_parallel or e.get("tensor_parallel", 1),
                          max_model_len=max_model_len or e.get("max_model_len", 0), dtype=dtype or e.get("dtype", ""))


def load_suite(path: str | Path) -> Suite:
    raw = read_config_yaml(path)
    benchmarks = []
    for i, b in enumerate(raw.get("benchmarks") or []):
        if not isinstance(b, dict) or "name" not in b or "harness_task" not in b:
            raise ConfigError(f"{path}: benchmarks[{i}] needs a name and a harness_task (null where the harness lacks it)")
        task = b["harness_task"]
        tasks = tuple([task] if isinstance(task, str) else task or [])
        if not tasks and not b.get("reason"):
            raise ConfigError(f"{path}: {b['name']}: harness_task is null; say why in `reason`")
        benchmarks.append(Benchmark(b["name"], tasks, b.get("metric"), b.get("shots"), b.get("scoring", "acc@1"),
                                    int(b.get("runs", 1)), b.get("section", ""), dict(b.get("card") or {}),
                                    b.get("reason", "")))
    gen = raw.get("generation") or {}
    return Suite(benchmarks, raw.get("card_model", ""), tuple(raw.get("baselines") or ()), raw.get("engine") or {},
                 gen.get("apply_chat_template", True), gen.get("sampling") or {}, gen.get("max_gen_toks"))


def task_suite(names: list[str]) -> Suite:
    """`--tasks a,b`: each harness task as a benchmark of its own, one greedy run, no card score."""
    return Suite([Benchmark(n, (n,)) for n in names])


def evaluate_suite(suite: Suite, model: str, backend: str, size: EngineSize, output_dir: str | Path, command: str,
                   limit: int | None = None, runs: int | None = None, batch_size: int | str = "auto",
                   log_samples: bool = False, trust_remote_code: bool = False, also: tuple[str, ...] = ()) -> dict:
    """Check, in this order and before any model is loaded: every task name (`also`: posttrain's own tasks, which
    a user may have meant and which `posttrain eval` runs apart), the model directory, every benchmark's dataset.
    Then build the model once, run every benchmark, print and write the table."""
    manager = harness.task_manager()
    names = [t for b in suite.benchmarks for t in b.tasks]
    harness.check_task_names(names, manager, also)
    if own := [t for t in names if t in also]:
        raise ConfigError(f"--tasks mixes posttrain's tasks ({', '.join(own)}) with harness tasks: run them apart "
                          f"(addition is also a harness task: posttrain_addition)")
    check_model_dir(model, "--model", trust_remote_code=trust_remote_code, need_template=suite.chat)
    harness.check_loadable([(b.name, t) for b in suite.benchmarks for t in b.tasks], manager)
    backend = harness.pick_backend(backend)
    spec = harness.ModelSpec(model, backend, size, batch_size, trust_remote_code,
                             suite.engine.get("gpu_memory_utilization", 0.9))
    print(f"[eval] {model} on {backend}: {sum(bool(b.tasks) for b in suite.benchmarks)} benchmarks", flush=True)
    lm = harness.build_lm(spec)
    samples_dir = Path(output_dir) / "harness_samples" if log_samples else None
    rows = run_suite(suite, lm, manager, limit=limit, runs=runs, log_samples=log_samples,
                     samples_dir=samples_dir)
    result = {"model": str(model), "backend": backend, "limit": limit, "command": command,
              "card_model": suite.card_model, "rows": rows}
    print(format_result(result))
    data, page = write_result(result, output_dir)
    print(f"results: {data}, {page}", flush=True)
    return result


def run_suite(suite: Suite, lm, manager, limit: int | None = None, runs: int | None = None,
              log_samples: bool = False, samples_dir: Path | None = None) -> list[dict]:
    """Every benchmark in order, one progress line per harness task run; a row per benchmark."""
    rows = []
    todo = [b for b in suite.benchmarks if b.tasks]
    for k, bench in enumerate(todo, start=1):
        started = time.monotonic()
        scores, metric, n = [], bench.metric, 0
        for task in bench.tasks:
            per_run = []
            for seed in range(min(bench.runs, runs or bench.runs)):
                sampling = dict(suite.sampling) if bench.runs > 1 else None  # Avg@k samples; Acc@1 is greedy
                out = harness.run_task(lm, task, manager, limit=limit, shots=bench.shots, chat=suite.chat,
                                       seed=seed, sampling=sampling, log_samples=log_samples,
                                       max_gen_toks=suite.max_gen_toks)
                score, metric = harness.task_score(out["results"], task, metric)
                per_run.append(score)
                n = max(n, sum(out["n"].values()))
                if log_samples and samples_dir is not None:
                    _write_samples(samples_dir, task, seed, out["samples"])
            scores.append(sum(per_run) / len(per_run))
            print(f"[eval] {k}/{len(todo)} {bench.name}: {task} {100 * scores[-1]:.1f} ({metric}, "
                  f"{len(per_run)} run{'s' * (len(per_run) > 1)}, {time.monotonic() - started:.0f} s)", flush=True)
        rows.append(_row(suite, bench, 100 * sum(scores) / len(scores), metric, n))
    return rows + [_row(suite, b, None, None, 0) for b in suite.benchmarks if not b.tasks]


def _row(suite: Suite, bench: Benchmark, ours: float | None, metric: str | None, n: int) -> dict:
    card = bench.card.get("marco_mini")
    return {"benchmark": bench.name, "section": bench.section, "harness_task": list(bench.tasks) or None,
            "metric": metric, "scoring": bench.scoring, "runs": bench.runs if bench.tasks else 0, "examples": n,
            "ours": ours, "card": card,
            "difference": None if ours is None or card is None else ours - card,
            "baselines": {m: bench.card[m] for m in suite.baselines if m in bench.card}, "reason": bench.reason}


def _write_samples(directory: Path, task: str, seed: int, samples: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{task}.seed{seed}.jsonl", "w", encoding="utf-8") as f:
        for name, items in samples.items():
            for s in items:
                f.write(json.dumps({"task": name, "doc_id": s["doc_id"], "target": s.get("target"),
                                    "response": s["resps"][0][0] if s.get("resps") else None,
                                    "filtered": s.get("filtered_resps", [None])[0]}, ensure_ascii=False,
                                   default=str) + "\n")


def _cell(value) -> str:
    return "—" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def markdown_table(result: dict) -> str:
    card = f"{result['card_model']} (card)" if result.get("card_model") else "card"
    lines = [f"| benchmark | ours | {card} | difference | scoring | harness task |", "|---|---:|---:|---:|---|---|"]
    for r in result["rows"]:
        tasks = r["harness_task"]
        task = f"`{tasks[0]}`" + (f" + {len(tasks) - 1} more" if len(tasks) > 1 else "") if tasks else f"none: {r['reason']}"
        diff = r["difference"]
        lines.append(f"| {r['benchmark']} | {_cell(r['ours'])} | {_cell(r['card'])} | "
                     f"{'—' if diff is None else f'{diff:+.1f}'} | {r['scoring']} | {task} |")
    return "\n".join(lines)


def format_result(result: dict) -> str:
    head = f"model: {result['model']} (backend {result['backend']}"
    head += f", at most {result['limit']} examples per task)" if result.get("limit") else ")"
    return head + "\n" + markdown_table(result)


def write_result(result: dict, directory: str | Path) -> tuple[Path, Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data, page = directory / RESULT_JSON, directory / RESULT_MD
    data.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    page.write_text(f"# Benchmarks: `{result['model']}`\n\n{format_result(result)}\n\n"
                    f"Regenerate with `{result['command']}`.\n", encoding="utf-8")
    return data, page
