"""How close is each OPD estimator's gradient to the exact reverse KL's, at the quality benchmark's student start?

For a few batches of the card's shape (32 prompts x 2 samples drawn from the student, scored by the
teacher, which returns its full distribution), every estimator's gradient over the student's trainable
parameters is compared with the exact one: the full-vocabulary reverse KL (`topk` with k = the
vocabulary, no tail) on the same samples. Printed per estimator: the mean cosine with the exact gradient
over the batches, the cosine of the gradient summed over all of them (what a 4x larger token batch gives),
and the gradient norm. One-shot and in-process (the workers' own classes, the loss table, the OPD step's
`training_example`): no training, a minute or two.

    python benchmarks/distill_gradients.py                    # after benchmarks/distill_quality.py made the models
    python benchmarks/distill_gradients.py --batches 4 --json runs/distill_quality/gradients.json
    python benchmarks/distill_gradients.py --work-dir runs/distill_quality_after_sft --student plateau   # after SFT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# name: (loss.mode, LossConfig overrides, teacher top-k the estimator sees)
ESTIMATORS = {
    "sampled (the card's)": ("sampled", {}, 0),
    "sampled, batch-mean baseline, normalised": ("sampled", {"baseline": "batch_mean", "normalize_advantages": True}, 0),
    "sampled, leave-one-out baseline (2 samples)": ("sampled", {"baseline": "prompt_mean"}, 0),
    "sampled, advantages clamped to ±3": ("sampled", {"advantage_clip": 3.0}, 0),
    "topk (k = 20, tail bucket)": ("topk", {}, 20),
    "topk_sampled (k = 20)": ("topk_sampled", {}, 20),
    "topk_sampled (k = 5)": ("topk_sampled", {}, 5),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", default="runs/distill_quality")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--json", default="", help="also write the numbers here")
    p.add_argument("--student", default="student_start",
                   help="the student's directory under WORK_DIR (its base.json): student_start (the from-scratch "
                        "regime's start) or plateau (the after-sft regime's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args()


def gradient(model, examples: list[tuple], loss, cfg) -> "torch.Tensor":
    """The flat gradient of the loss summed over the batch's response tokens, per response token (as the trainer's)."""
    import torch

    from posttrain.data.packing import IGNORE, pack

    model.zero_grad(set_to_none=True)
    batches = pack(examples, 4096)
    targets = sum(b.num_loss_tokens for b in batches)
    for batch in batches:
        logits_TV = model(input_ids=batch.input_ids[None], position_ids=batch.position_ids[None], use_cache=False).logits[0]
        mask_T = batch.labels != IGNORE
        out = loss.fn(logits_TV[mask_T], batch.labels[mask_T], cfg, **{n: batch.extras[n][mask_T] for n in loss.inputs})
        (out[0] if isinstance(out, tuple) else out).sum().div(targets).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def batch_gradients(model, prompts, samples, scores, estimators: dict) -> dict:
    """Each estimator's gradient on one batch, and the exact one (key None)."""
    import torch

    from posttrain.config import LossConfig
    from posttrain.engines.types import Scores
    from posttrain.losses import LOSSES
    from posttrain.losses.advantages import batch_advantages
    from posttrain.stages.opd.step import training_example

    grads = {}
    for name, (mode, options, k) in {None: ("topk", {}, 0), **estimators}.items():
        cfg = replace(LossConfig(mode=mode, topk=k or scores[0].topk_ids.shape[-1]), **options)
        loss = LOSSES[mode].configured(replace(cfg, topk=k))  # metrics need no top-k here
        cut = [Scores(s.logprobs, s.topk_ids[:, :cfg.topk], s.topk_logprobs[:, :cfg.topk]) for s in scores]
        adv = batch_advantages([torch.tensor(s.sampler_logprobs) for s in samples],
                               [s.logprobs for s in cut], [s.prompt_index for s in samples], cfg)
        examples = [training_example(prompts[s.prompt_index], s, sc, loss.inputs, a)
                    for s, sc, a in zip(samples, cut, adv.per_sample)]
        grads[name] = gradient(model, examples, loss, cfg)
    return grads


def main() -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.config import RolloutConfig, TeacherConfig
    from posttrain.data.chat import prompt_ids
    from posttrain.engines.hf_rollout import HFRolloutWorker
    from posttrain.engines.hf_teacher import HFTeacherWorker
    from posttrain.eval.tasks import examples
    from posttrain.models.packed_attention import register

    args = parse_args()
    work = Path(args.work_dir)
    student = Path(json.loads((work / args.student / "base.json").read_text())["model"])
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = Path(json.loads((work / "teacher" / "base.json").read_text())["model"])
    threads = torch.get_num_threads()
    tokenizer = AutoTokenizer.from_pretrained(student)
    model = AutoModelForCausalLM.from_pretrained(student, attn_implementation=register())
    for name, p in model.named_parameters():
        p.requires_grad_(not name.endswith("mlp.gate.weight"))  # OPD freezes the router
    rollout = HFRolloutWorker(str(student), RolloutConfig(samples_per_prompt=2, max_new_tokens=32, batch_size=64), threads)
    scorer = HFTeacherWorker(str(teacher), TeacherConfig(), threads)
    train = [e for task in ("addition", "chain") for e in examples(task, "train")]
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, dim=0))  # noqa: E731
    per_batch, summed = {name: [] for name in ESTIMATORS}, {}
    norms = {name: [] for name in [None, *ESTIMATORS]}
    for b in range(args.batches):
        chosen = [train[(b * args.prompts + i) * 7 % len(train)] for i in range(args.prompts)]
        prompts = [prompt_ids(tokenizer, [{"role": "user", "content": e.prompt}]) for e in chosen]
        samples = rollout.generate(list(enumerate(prompts)), seed=b)
        scores = scorer.score([(prompts[s.prompt_index], s.response_ids) for s in samples], topk=model.config.vocab_size)
        grads = batch_gradients(model, prompts, samples, scores, ESTIMATORS)
        for name, g in grads.items():
            norms[name].append(float(g.norm()))
            summed[name] = summed.get(name, 0) + g
            if name is not None:
                per_batch[name].append(cos(g, grads[None]))
    rows = {name: {"cosine": sum(v) / len(v), "cosine_summed": cos(summed[name], summed[None]),
                   "grad_norm": sum(norms[name]) / len(norms[name])} for name, v in per_batch.items()}
    print(f"exact reverse-KL gradient norm: {sum(norms[None]) / len(norms[None]):.3f}; {args.batches} batches of "
          f"{args.prompts} prompts x 2")
    print("| estimator | cosine with the exact gradient (one batch) | summed over the batches | gradient norm |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['cosine']:.2f} | {r['cosine_summed']:.2f} | {r['grad_norm']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"student": str(student), "teacher": str(teacher), "batches": args.batches, "prompts": args.prompts, "estimators": rows,
                                               "exact_grad_norm": sum(norms[None]) / len(norms[None])}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
