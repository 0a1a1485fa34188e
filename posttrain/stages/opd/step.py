"""One OPD step: generate → score → train → sync, readable on one screen (`opd_step`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from posttrain.config import OPDConfig
from posttrain.data.packing import pack
from posttrain.data.prompts import Prompt
from posttrain.engines.group import RolloutGroup, TeacherGroup
from posttrain.engines.sizing import teacher_topk
from posttrain.engines.types import Sample, Scores
from posttrain.losses import LOSSES, Loss
from posttrain.losses.advantages import Advantages, batch_advantages
from posttrain.stages.opd.ahead import Ahead
from posttrain.train.group import TrainerGroup

# How each input a loss can name (posttrain.losses.TOKEN_INPUTS) comes from a rollout sample, its scores and
# its advantages (computed over the global batch before training: posttrain.losses.advantages).
TOKEN_INPUTS = {
    "sampler_logprobs": lambda sample, scores, advantages: torch.tensor(sample.sampler_logprobs),
    "teacher_logprobs": lambda sample, scores, advantages: scores.logprobs,
    "teacher_topk_ids": lambda sample, scores, advantages: scores.topk_ids,
    "teacher_topk_logprobs": lambda sample, scores, advantages: scores.topk_logprobs,
    "advantages": lambda sample, scores, advantages: advantages,
}


@dataclass
class Generated:
    """One step's rollout and teacher scores, and what each took."""

    samples: list[Sample]
    scores: list[Scores]  # per sample: the teacher's log-probs of its response tokens (and top-k)
    rollout_s: float
    teacher_s: float


@dataclass
class StepResult:
    """What one OPD step did, for the step's metrics record."""

    reverse_kl: float  # mean per response token of log π_sampler − log π_teacher (the single-sample estimate)
    loss: float  # the loss per response token of the global batch
    response_len: float
    truncated_frac: float
    rollout_s: float
    teacher_s: float
    wait_s: float  # the trainer waiting for samples (one step off-policy: what was not hidden)
    train_s: float
    sync_s: float
    step_s: float  # wall time: with `ahead`, less than the stages' sum
    train_compute_s: float
    tokens: int
    tokens_per_s: float
    lr: float
    grad_norm: float | None  # before clipping (DeepSpeed's global norm; posttrain's own under ZeRO stage 0)
    grad_clipped: bool  # grad_norm > optim.grad_clip: the step was scaled down
    skipped: bool
    padding: dict[str, float] = field(default_factory=dict)  # rollout_pad_frac / teacher_pad_frac where they pad
    router: dict = field(default_factory=dict)  # expert_imbalance / expert_load per layer
    loss_metrics: dict = field(default_factory=dict)  # the loss's own, per response token
    advantage: dict = field(default_factory=dict)  # adv_mean / adv_std / adv_min / adv_max over the global batch

    def metrics(self) -> dict:
        """The metrics record (without `skipped`, which the loop counts)."""
        nested = ("skipped", "padding", "router", "loss_metrics", "advantage")
        record = {k: v for k, v in vars(self).items() if k not in nested}
        return {**record, **self.loss_metrics, **self.advantage, **self.padding, **self.router}


def generate_and_score(step: int, prompts: list[Prompt], rollout: RolloutGroup, teacher: TeacherGroup,
                       cfg: OPDConfig) -> Generated:
    """Stages 1 and 2 of a step: sample, then score the samples."""
    timer = time.perf_counter()
    # 1. Rollout: samples_per_prompt responses per prompt from the current student, with the sampler's log-probs.
    samples = draw_samples(step, prompts, rollout, cfg)
    rollout_s, timer = time.perf_counter() - timer, time.perf_counter()
    # 2. Score: the teacher's log-probs (temperature 1) of exactly those tokens.
    scores = teacher.score(sequences(prompts, samples), topk=teacher_topk(cfg))
    return Generated(samples, scores, rollout_s, time.perf_counter() - timer)


def draw_samples(step: int, prompts: list[Prompt], rollout: RolloutGroup, cfg: OPDConfig) -> list[Sample]:
    """Step `step`'s samples of `prompts` (its seed: the run's seed and the step)."""
    return rollout.generate([p.input_ids for p in prompts], seed=cfg.trainer.seed * 1_000_003 + step)


def sequences(prompts: list[Prompt], samples: list[Sample]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) of each sample: what a teacher scores."""
    return [(prompts[s.prompt_index].input_ids, s.response_ids) for s in samples]


def opd_step(step: int, prompts: list[Prompt], rollout: RolloutGroup, teacher: TeacherGroup, trainer: TrainerGroup,
             cfg: OPDConfig, ahead: Ahead | None = None) -> StepResult:
    """One on-policy distillation step over `prompts`; with `ahead` (rollout.async_steps: 1) its
    samples and scores were made while the previous step trained."""
    started = time.perf_counter()
    # 1-2. Rollout and teacher scores (posttrain.stages.opd.ahead: already in flight, one step off-policy).
    got = ahead.take(step) if ahead else generate_and_score(step, prompts, rollout, teacher, cfg)
    wait_s, timer = time.perf_counter() - started, time.perf_counter()

    # 3. Train: the loss `loss.mode` names (a divergence to the teacher) on the student's own tokens; prompt
    #    tokens carry no loss. What needs the whole batch (the advantages' baseline and normalisation) is
    #    computed here, first.
    loss = LOSSES[cfg.loss.mode].configured(cfg.loss)
    advantages = step_advantages(got, loss, cfg)
    per_sample = advantages.per_sample if advantages else [None] * len(got.samples)
    examples = [training_example(prompts[s.prompt_index].input_ids, s, scores, loss.inputs, advantage)
                for s, scores, advantage in zip(got.samples, got.scores, per_sample)]
    result = trainer.train_step(pack(examples, cfg.data.pack_tokens), loss, cfg.loss)
    train_s, timer = time.perf_counter() - timer, time.perf_counter()

    # 4. Sync: the trainer streams the new student weights into the rollout engines, one bucket at a
    #    time (queued behind the generation in flight when working ahead).
    ahead.sync(rollout.update_weights) if ahead else rollout.update_weights()
    sync_s = time.perf_counter() - timer

    samples, step_s = got.samples, time.perf_counter() - started
    response_tokens = sum(len(s.response_ids) for s in samples)
    prompt_lens = [len(prompts[s.prompt_index].input_ids) for s in samples]
    response_lens = [len(s.response_ids) for s in samples]
    reverse_kl = sum(float(sum(s.sampler_logprobs) - scores.logprobs.sum()) for s, scores in zip(samples, got.scores))
    return StepResult(
        reverse_kl=reverse_kl / response_tokens, loss=result.loss, response_len=response_tokens / len(samples),
        truncated_frac=sum(s.truncated for s in samples) / len(samples), rollout_s=got.rollout_s,
        teacher_s=got.teacher_s, wait_s=wait_s, train_s=train_s, sync_s=sync_s, step_s=step_s,
        train_compute_s=result.compute_s, tokens=result.sums.tokens, tokens_per_s=result.sums.tokens / step_s,
        lr=result.lr, grad_norm=result.grad_norm, skipped=result.skipped,
        grad_clipped=result.grad_norm is not None and 0 < cfg.optim.grad_clip < result.grad_norm,
        padding={**rollout.padding(prompt_lens, response_lens), **teacher.padding(prompt_lens, response_lens)},
        router=result.router_metrics(), loss_metrics=result.loss_metrics(),
        advantage=advantages.stats() if advantages else {})


def step_advantages(got: Generated, loss: Loss, cfg: OPDConfig) -> Advantages | None:
    """The sampled-token advantages of the global batch, where the loss takes them (None otherwise)."""
    if "advantages" not in loss.inputs:
        return None
    return batch_advantages([torch.tensor(s.sampler_logprobs) for s in got.samples],
                            [scores.logprobs for scores in got.scores], [s.prompt_index for s in got.samples], cfg.loss)


def training_example(prompt_ids: list[int], sample: Sample, scores: Scores, inputs: tuple[str, ...],
                     advantages: torch.Tensor | None = None) -> tuple:
    """(token ids, loss mask, per-token inputs of the loss) of one prompt + response."""
    prompt_len = len(prompt_ids)
    extras = {name: _after_prompt(TOKEN_INPUTS[name](sample, scores, advantages), prompt_len) for name in inputs}
    return prompt_ids + sample.response_ids, [0] * prompt_len + [1] * len(sample.response_ids), extras


def _after_prompt(values: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Per-response-token values laid out over prompt + response tokens (zeros over the prompt)."""
    return torch.cat([torch.zeros((prompt_len, *values.shape[1:]), dtype=values.dtype), values])
