"""The losses, in one table: a loss is a per-token function and the names of the inputs it needs.

Every loss here is computed at the positions that carry a target (an assistant token in SFT, a
response token in OPD), from the student's logits there, and returns one value per position:

    fn(logits_NV, targets_N, cfg, **inputs) -> loss_N   or   (loss_N, metrics)

`cfg` is the stage's `LossConfig` (None in SFT); `inputs` are the per-token tensors the loss names
in `Loss.inputs`, each [N, ...]. What an OPD step can give (posttrain.stages.opd.step builds them
from the rollout's `Sample` and the teacher's `Scores`):

    sampler_logprobs [N]           the rollout sampler's log-prob of the token it drew
    teacher_logprobs [N]           the teacher's log-prob of that token (temperature 1)
    teacher_topk_ids [N, k]        the teacher's top-k token ids at that position
    teacher_topk_logprobs [N, k]   and their log-probs
    advantages [N]                 the sampled token's advantage, −kl_coef · (sampler − teacher log-prob),
                                   with the baseline / normalisation of the global batch
                                   (posttrain.losses.advantages; computed before training)

`metrics` maps a metric name to a per-token tensor [N] (what tells whether the loss is healthy: a
clipped fraction, an exact KL beside the sampled one); the trainer sums each over the target tokens and
reports it per target token of the global batch, beside the loss.

The trainer sums `loss_N` and divides by the target tokens of the whole global batch (torchtune's
token-count normalisation), so a step's gradient is the same however the batch is split over
workers and micro-batches. A new loss is one function and one `LOSSES` entry (or `register_loss`);
its name is then valid for `loss.mode`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from posttrain.config import LossConfig
from posttrain.losses.jsd import topk_jsd
from posttrain.losses.reverse_kl import sampled_reverse_kl, topk_reverse_kl, topk_sampled_reverse_kl
from posttrain.losses.tokens import nll

TOKEN_INPUTS = ("sampler_logprobs", "teacher_logprobs", "teacher_topk_ids", "teacher_topk_logprobs", "advantages")
TOPK = ("teacher_topk_ids", "teacher_topk_logprobs")


@dataclass(frozen=True)
class Loss:
    fn: Callable  # (logits_NV, targets_N, cfg, **inputs) -> loss_N, or (loss_N, {metric: values_N})
    inputs: tuple[str, ...] = ()  # of TOKEN_INPUTS: the keyword arguments `fn` takes
    # Inputs used only for metrics (the top-k reverse KL beside a sampled estimate): passed when the
    # teacher's top-k is asked for (loss.topk > 0), left out otherwise; `fn` defaults them to None.
    metric_inputs: tuple[str, ...] = ()

    @property
    def needs_teacher_topk(self) -> bool:
        return any(name in TOPK for name in self.inputs)

    def configured(self, cfg: LossConfig) -> "Loss":
        """This loss with the inputs a run under `cfg` gives it: its metric inputs where top-k is asked for."""
        extra = tuple(i for i in self.metric_inputs if cfg.topk > 0 and i not in self.inputs)
        return replace(self, inputs=self.inputs + extra, metric_inputs=())


LOSSES: dict[str, Loss] = {
    "nll": Loss(nll),
    "sampled": Loss(sampled_reverse_kl, inputs=("sampler_logprobs", "advantages"),
                    metric_inputs=("teacher_logprobs", *TOPK)),
    "topk": Loss(topk_reverse_kl, inputs=TOPK, metric_inputs=("teacher_logprobs",)),
    "topk_sampled": Loss(topk_sampled_reverse_kl, inputs=("sampler_logprobs", "teacher_logprobs", *TOPK)),
    "topk_jsd": Loss(topk_jsd, inputs=TOPK, metric_inputs=("teacher_logprobs",)),
}


def register_loss(name: str, loss: Loss) -> None:
    unknown = [i for i in loss.inputs + loss.metric_inputs if i not in TOKEN_INPUTS]
    if unknown:
        raise ValueError(f"loss {name!r}: unknown input(s) {unknown}; a loss can take {list(TOKEN_INPUTS)}")
    LOSSES[name] = loss
