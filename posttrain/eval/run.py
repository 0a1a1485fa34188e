"""`posttrain eval`: task accuracy (greedy), reverse KL to a teacher on the student's own samples, and
response length.

The same functions run inside the OPD loop on the rollout workers' (synced) weights and here on
a model directory, in-process, through the rollout and teacher workers' own classes: what is
measured is exactly what the pipeline samples and scores.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Callable

from posttrain.config import RolloutConfig, TeacherConfig
from posttrain.data.chat import prompt_ids
from posttrain.engines.hf_rollout import HFRolloutWorker
from posttrain.engines.hf_teacher import HFTeacherWorker
from posttrain.eval.tasks import TaskExample, examples, is_correct

# generate(prompt_ids, seed, greedy) -> samples with .response_ids / .sampler_logprobs / .truncated
Generate = Callable[..., list]


def task_accuracy(generate: Generate, tokenizer, task_examples: list[TaskExample], seed: int = 0) -> dict:
    """Greedy responses to every example; accuracy per task and per language, mean response length."""
    ids = [prompt_ids(tokenizer, [{"role": "user", "content": e.prompt}]) for e in task_examples]
    samples = generate(ids, seed, greedy=True)
    stats: dict = defaultdict(lambda: {"n": 0, "correct": 0, "tokens": 0, "by_language": defaultdict(lambda: [0, 0])})
    for example, sample in zip(task_examples, samples, strict=True):
        response = tokenizer.decode(sample.response_ids, skip_special_tokens=True)
        ok = is_correct(example, response)
        entry = stats[example.task]
        entry["n"] += 1
        entry["correct"] += ok
        entry["tokens"] += len(sample.response_ids)
        entry["by_language"][example.language][0] += ok
        entry["by_language"][example.language][1] += 1
    return {
        task: {"n": e["n"], "correct": e["correct"], "accuracy": e["correct"] / e["n"], "response_len": e["tokens"] / e["n"],
               "by_language": {lang: c / n for lang, (c, n) in sorted(e["by_language"].items())}}
        for task, e in stats.items()
    }


def reverse_kl_to_teacher(generate: Generate, score: Callable, tokenizer, task_examples: list[TaskExample],
                          seed: int = 0) -> dict:
    """Mean per-token `log π_student − log π_teacher` on the student's own samples (temperature 1)."""
    ids = [prompt_ids(tokenizer, [{"role": "user", "content": e.prompt}]) for e in task_examples]
    samples = generate(ids, seed, greedy=False)
    scores = score([(ids[i], s.response_ids) for i, s in enumerate(samples)])
    total, tokens = 0.0, 0
    for sample, scored in zip(samples, scores, strict=True):
        total += float(sum(sample.sampler_logprobs) - scored.logprobs.sum())
        tokens += len(sample.response_ids)
    return {"reverse_kl": total / max(1, tokens), "samples": len(samples), "tokens": tokens}


def evaluate(model: str, tasks: list[str], limit: int = 64, teacher: str | None = None, max_new_tokens: int = 32,
             batch_size: int = 64, seed: int = 0, trust_remote_code: bool = False) -> dict:
    """Evaluate a model directory (or hub id) in this process on the tasks' eval split."""
    import torch
    from transformers import AutoTokenizer

    threads = torch.get_num_threads()
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    rollout_cfg = RolloutConfig(samples_per_prompt=1, max_new_tokens=max_new_tokens, temperature=1.0, batch_size=batch_size)
    student = HFRolloutWorker(model, rollout_cfg, threads, trust_remote_code)

    def generate(ids, seed, greedy=False):
        return student.generate(list(enumerate(ids)), seed, greedy=greedy)

    chosen = [e for task in tasks for e in examples(task, "eval", limit=limit, seed=seed)]
    result = {"model": str(model), "teacher": teacher, "split": "eval", "seed": seed, "max_new_tokens": max_new_tokens,
              "tasks": task_accuracy(generate, tokenizer, chosen, seed)}
    if teacher is not None:
        scorer = HFTeacherWorker(teacher, TeacherConfig(batch_size=batch_size), threads, trust_remote_code)
        result["teacher_kl"] = reverse_kl_to_teacher(generate, scorer.score, tokenizer, chosen, seed)
    return result


def format_table(result: dict) -> str:
    lines = [f"model: {result['model']}", " task     |   n | accuracy | response len", "----------+-----+----------+-------------"]
    for task, t in result["tasks"].items():
        lines.append(f" {task:8s} | {t['n']:3d} | {t['accuracy']:8.3f} | {t['response_len']:12.1f}")
    if "teacher_kl" in result:
        kl = result["teacher_kl"]
        lines.append(f"reverse KL to {result['teacher']}: {kl['reverse_kl']:.4f} nats/token "
                     f"({kl['samples']} samples, {kl['tokens']} tokens, temperature 1)")
    return "\n".join(lines)


def write_json(result: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
