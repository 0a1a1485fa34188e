"""Typed run configuration: YAML files mapped onto dataclasses, with `key=value` overrides.

Every stage's config is a tree of dataclasses. `load_config(Cls, path, overrides)` reads the YAML,
applies dotted overrides (`trainer.num_workers=2`), and converts the result field by field, so an
unknown key, a wrong type or a missing required value fails at once with the dotted key, the file,
and the closest valid key — before any model or data is touched.
"""

from __future__ import annotations

from posttrain.config.checks import check_output_dir
from posttrain.config.fields import (PLACEMENT_STRATEGIES, REQUIRED, ConfigError, non_negative, one_of, positive,
                                     unit_interval)
from posttrain.config.files import apply_override, read_config_yaml, strict_yaml
from posttrain.config.loading import load_config, to_dict
from posttrain.config.sections import (CheckpointConfig, ClusterConfig, DataConfig, DeepSpeedConfig, EvalConfig,
                                       LoggingConfig, LoRAConfig, LossConfig, ModelConfig, OPDConfig, OPDDataConfig,
                                       OptimConfig, RayConfig, RolloutConfig, SFTConfig, TeacherConfig, TeacherStage,
                                       TrainerConfig)

__all__ = [
    "PLACEMENT_STRATEGIES", "REQUIRED", "CheckpointConfig", "ClusterConfig", "ConfigError", "DataConfig",
    "DeepSpeedConfig", "EvalConfig", "LoRAConfig", "LoggingConfig", "LossConfig", "ModelConfig", "OPDConfig",
    "OPDDataConfig", "OptimConfig", "RayConfig", "RolloutConfig", "SFTConfig", "TeacherConfig", "TeacherStage",
    "TrainerConfig", "apply_override", "check_output_dir", "load_config", "non_negative", "one_of", "positive",
    "read_config_yaml", "strict_yaml", "to_dict", "unit_interval",
]
