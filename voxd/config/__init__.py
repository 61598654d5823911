"""voxd's configuration: YAML with line numbers, validated sections, ``--set`` overrides, a JSON schema.

``load_config(path, overrides, plugins)`` returns a :class:`LoadedConfig` or raises
:class:`~voxd.errors.ConfigError` whose lines read ``file:line: path: message`` (or
``--set PATH=VALUE: path: message`` for a value that came from an override).
"""

from __future__ import annotations

from voxd.config.load import LoadedConfig, load_config, load_config_text
from voxd.config.model import (
    ArrayConfig,
    CaptureConfig,
    FileCapture,
    LogConfig,
    OutputConfig,
    ProcessingConfig,
    StageSpec,
    VoxdConfig,
)
from voxd.config.schema import config_json_schema

__all__ = [
    "ArrayConfig",
    "CaptureConfig",
    "FileCapture",
    "LoadedConfig",
    "LogConfig",
    "OutputConfig",
    "ProcessingConfig",
    "StageSpec",
    "VoxdConfig",
    "config_json_schema",
    "load_config",
    "load_config_text",
]
