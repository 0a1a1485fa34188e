"""What a training step returns: one rank's share (`RankStep`) and the whole step (`TrainStep`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from posttrain.losses.router import expert_imbalance


@dataclass
class LossSums:
    """Sums over target tokens — of a micro-batch, a rank or the global batch: they add up."""

    loss: float = 0.0  # the per-token loss, summed
    targets: int = 0  # target tokens
    aux: float = 0.0  # the router load-balancing loss x the micro-batch's target tokens
    tokens: int = 0  # every token computed (prompt and padding-free context included)
    metrics: dict[str, float] = field(default_factory=dict)  # the loss's own per-token metrics, summed

    def __add__(self, other: "LossSums") -> "LossSums":
        metrics = dict(self.metrics)
        for name, value in other.metrics.items():
            metrics[name] = metrics.get(name, 0.0) + value
        return LossSums(self.loss + other.loss, self.targets + other.targets, self.aux + other.aux,
                        self.tokens + other.tokens, metrics)


@dataclass
class RankStep:
    """One trainer rank's forward/backward over its micro-batches and its optimizer step."""

    sums: LossSums
    expert_counts_LE: torch.Tensor | None  # tokens routed to each expert, per layer
    grad_norm: float | None
    skipped: bool  # a non-finite loss or gradient: no update (the same on every rank)
    lr: float  # the rate this step applied
    compute_s: float


@dataclass
class TrainStep:
    """One optimizer step of the whole trainer group."""

    sums: LossSums
    global_targets: int
    micro_batches: int  # per worker
    expert_counts_LE: torch.Tensor | None
    grad_norm: float | None
    skipped: bool
    lr: float
    compute_s: float  # the slowest rank's

    @classmethod
    def of(cls, ranks: list[RankStep], global_targets: int, micro_batches: int) -> "TrainStep":
        sums = LossSums()
        for rank in ranks:
            sums = sums + rank.sums
        counts = [r.expert_counts_LE for r in ranks if r.expert_counts_LE is not None]
        first = ranks[0]  # grad norm, skip and lr agree over ranks (DeepSpeed reduces them)
        return cls(sums, global_targets, micro_batches, torch.stack(counts).sum(0) if counts else None,
                   first.grad_norm, first.skipped, first.lr, max(r.compute_s for r in ranks))

    @property
    def loss(self) -> float:
        """The loss per target token of the global batch."""
        return self.sums.loss / max(1, self.global_targets)

    def loss_metrics(self) -> dict[str, float]:
        """The loss's own metrics, per target token of the global batch."""
        return {name: value / max(1, self.global_targets) for name, value in self.sums.metrics.items()}

    def router_metrics(self) -> dict:
        """Per layer: busiest expert / mean (1.0 = balanced), and the raw counts."""
        if self.expert_counts_LE is None:
            return {}
        return {"expert_imbalance": [round(x, 4) for x in expert_imbalance(self.expert_counts_LE)],
                "expert_load": self.expert_counts_LE.int().tolist()}
