"""Configuration: the `GemsSettings` model, YAML presets, env overrides, and the `GemsError` family."""

from gems.configs.errors import ConfigError, GemsError, UsageError
from gems.configs.loading import ENV_OVERRIDES, context_settings, load_settings, resolve_config_path
from gems.configs.settings import (
    ChromaSettings,
    EditorSettings,
    EmbeddingSettings,
    GemsSettings,
    GeneratorSettings,
    ImageModelSettings,
    JudgeSettings,
    LoopSettings,
    MemorySettings,
    MLLMSettings,
    RunOptions,
    SkillSettings,
    StorageSettings,
)

__all__ = [
    "ENV_OVERRIDES",
    "ChromaSettings",
    "ConfigError",
    "EditorSettings",
    "EmbeddingSettings",
    "GemsError",
    "GemsSettings",
    "GeneratorSettings",
    "ImageModelSettings",
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
