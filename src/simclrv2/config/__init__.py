"""Configuration as data: one frozen dataclass per section, loaded from TOML plus command-line overrides.

Every stage reads the sections it needs from one :class:`Config`, so a single file describes a whole
pipeline and ``simclrv2 pretrain --help`` can list every option with its default. Values are validated once,
here, at the edge; bad values and unknown keys become one :class:`SimCLRv2Error` that says what to do.
"""

from __future__ import annotations

from simclrv2.config.loading import (
    build_config,
    config_to_dict,
    load_config,
    option_defaults,
    read_toml,
    to_toml,
)
from simclrv2.config.sections import (
    Config,
    DataConfig,
    DistillConfig,
    EvaluateConfig,
    FinetuneConfig,
    ModelConfig,
    PipelineConfig,
    PretrainConfig,
    RunConfig,
    SupervisedConfig,
)

__all__ = [
    "Config", "DataConfig", "DistillConfig", "EvaluateConfig", "FinetuneConfig", "ModelConfig", "PipelineConfig",
    "PretrainConfig", "RunConfig", "SupervisedConfig", "build_config", "config_to_dict", "load_config",
    "option_defaults", "read_toml", "to_toml",
]
