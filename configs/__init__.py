"""Configuration: the `GemsSettings` model, YAML presets and env overrides."""

from gems.configs.settings import (
    ENV_OVERRIDES,
    ChromaSettings,
    ConfigError,
    EmbeddingSettings,
    GemsSettings,
    GeneratorSettings,
    JudgeSettings,
    LoopSettings,
    MemorySettings,
    MLLMSettings,
    SkillSettings,
    StorageSettings,
    load_settings,
    resolve_config_path,
)

__all__ = [
    "ENV_OVERRIDES",
    "ChromaSettings",
    "ConfigError",
    "EmbeddingSettings",
    "GemsSettings",
    "GeneratorSettings",
    "JudgeSettings",
    "LoopSettings",
    "MLLMSettings",
    "MemorySettings",
    "SkillSettings",
    "StorageSettings",
    "load_settings",
    "resolve_config_path",
]
