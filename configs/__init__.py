"""Configuration: the `GemsSettings` model, YAML presets, env overrides, and the `GemsError` family."""

from gems.configs.errors import ConfigError, GemsError, UsageError
from gems.configs.settings import (
    ENV_OVERRIDES,
    ChromaSettings,
    EmbeddingSettings,
    GemsSettings,
    GeneratorSettings,
    JudgeSettings,
    LoopSettings,
    MemorySettings,
    MLLMSettings,
    RunOptions,
    SkillSettings,
    StorageSettings,
    context_settings,
    load_settings,
    resolve_config_path,
)

__all__ = [
    "ENV_OVERRIDES",
    "ChromaSettings",
    "ConfigError",
    "EmbeddingSettings",
    "GemsError",
    "GemsSettings",
    "GeneratorSettings",
    "JudgeSettings",
    "LoopSettings",
    "MLLMSettings",
    "MemorySettings",
    "RunOptions",
    "SkillSettings",
    "StorageSettings",
    "UsageError",
    "context_settings",
    "load_settings",
    "resolve_config_path",
]
