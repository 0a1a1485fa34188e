"""How many optimizer steps a run takes, from its config and its data mixture, without loading the data.

SFT: `trainer.max_steps` when set, else `trainer.epochs` x the rows one epoch of the mixture draws (its sources'
`take`/`size`, local files counted: `posttrain.data.mixture.epoch_rows`) / `trainer.global_batch_size`.
OPD: the cascade's step counts. Each answer says where it came from, and whether it is an estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from posttrain.data.mixture import DataError, epoch_rows, load_mixture_spec
from posttrain.infra.paths import resolve_path


@dataclass
class RunLength:
    steps: int
    source: str  # where the count came from, said in full
    estimate: bool = False


def sft_steps(cfg, fallback: int) -> RunLength:
    """The SFT run's steps; `fallback` (the card's count) only when neither the config nor the mixture tells."""
    trainer = cfg.trainer
    if trainer.max_steps:
        return RunLength(trainer.max_steps, "trainer.max_steps")
    try:
        rows, how = epoch_rows(load_mixture_spec(resolve_path(cfg.data.mixture)))
    except DataError as e:
        rows, how = None, str(e)
    if rows is None:
        return RunLength(fallback, f"the card's ~{fallback:,} (the mixture does not tell: {how})", estimate=True)
    steps = max(1, math.ceil(trainer.epochs * rows / trainer.global_batch_size))
    return RunLength(steps, (f"trainer.epochs {trainer.epochs:g} x {how} / trainer.global_batch_size "
                             f"{trainer.global_batch_size} (an estimate: the weighted draw is random, and over-long "
                             "examples are dropped or truncated when the data loads)"), estimate=True)


def opd_steps(cfg) -> RunLength:
    return RunLength(sum(stage.steps for stage in cfg.teachers),
                     " + ".join(f"{stage.steps:,} ({stage.path})" for stage in cfg.teachers) + " teacher steps")
