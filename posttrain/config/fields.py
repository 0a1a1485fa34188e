"""The config's error and its field helpers: each value check is declared with the field it checks."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """A configuration value is unknown, missing or of the wrong type."""


REQUIRED: Any = dataclasses.MISSING  # a field with no default must be set by the YAML or an override


# The value checks are declared with the fields they check (`_check_values` walks the tree), so a
# check cannot name a field that does not exist.
def one_of(default, *allowed):
    """A field whose value must be one of `allowed`."""
    return field(default=default, metadata={"choices": allowed})


def positive(default=REQUIRED):
    """A number that must be > 0 (and finite)."""
    return field(default=default, metadata={"positive": True})


def non_negative(default):
    """A number that must be >= 0."""
    return field(default=default, metadata={"non_negative": True})


def unit_interval(default):
    """A number that must lie in [0, 1]."""
    return field(default=default, metadata={"unit_interval": True})


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # Ray placement group strategies
