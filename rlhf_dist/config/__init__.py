"""Typed run configuration: schema, loading with overrides, cross-field validation."""

from rlhf_dist.config.load import (
    ConfigError,
    default_config_path,
    dump_config,
    dump_defaults,
    load_config,
    parse_override,
)
from rlhf_dist.config.schema import RunConfig, TinyModelConfig
from rlhf_dist.config.toy import toy_settings_line
from rlhf_dist.config.validate import validate_config

__all__ = [
    "ConfigError",
    "RunConfig",
    "TinyModelConfig",
    "default_config_path",
    "dump_config",
    "dump_defaults",
    "load_config",
    "parse_override",
    "toy_settings_line",
    "validate_config",
]
