"""What `docs/distillation_quality.md` says about the measured numbers (filled in from the results)."""

from __future__ import annotations


def findings(summary: dict) -> str:
    return "**Result.** (to be written from the measurements)"
