"""Diffusers presets: the settings the reference GEMS servers use, filled in where the config leaves a gap."""

from __future__ import annotations

from typing import Any

from gems.configs import ConfigError, GeneratorSettings

PRESETS: dict[str, dict[str, Any]] = {
    # Reference Z-Image-Turbo server: bf16, 1024x1024, 9 scheduler steps (8 NFE), no CFG.
    "z-image-turbo": {
        "model": "Tongyi-MAI/Z-Image-Turbo",
        "width": 1024,
        "height": 1024,
        "steps": 9,
        "guidance_scale": 0.0,
        "dtype": "bfloat16",
    },
    # Qwen-Image-2512 at its native 1328x1328, 50 steps. In diffusers' QwenImagePipeline real CFG is
    # true_cfg_scale with a negative prompt; guidance_scale alone does nothing for this model.
    "qwen-image-2512": {
        "model": "Qwen/Qwen-Image-2512",
        "width": 1328,
        "height": 1328,
        "steps": 50,
        "negative_prompt": " ",
        "call_kwargs": {"true_cfg_scale": 4.0},
        "dtype": "bfloat16",
    },
    # Runs on a laptop CPU in seconds: one-step distilled SD 2.1 at 512x512.
    "sd-turbo": {
        "model": "stabilityai/sd-turbo",
        "width": 512,
        "height": 512,
        "steps": 1,
        "guidance_scale": 0.0,
        "dtype": "float32",
    },
}


def effective_settings(settings: GeneratorSettings) -> GeneratorSettings:
    """Fill unset fields from the preset (diffusers only); explicit settings always win."""
    if settings.backend != "diffusers" or not settings.preset:
        if settings.backend == "diffusers" and not settings.model:
            raise ConfigError("generator.model is not set: give a diffusers model id or folder, or a preset")
        return settings
    if settings.preset not in PRESETS:
        raise ConfigError(f"unknown generator.preset {settings.preset!r}; choose one of: {', '.join(PRESETS)}")
    preset = PRESETS[settings.preset]
    updates: dict[str, Any] = {}
    explicit = settings.model_fields_set
    for key, value in preset.items():
        if key == "call_kwargs":
            updates[key] = {**value, **settings.call_kwargs}
        elif key == "dtype":
            if settings.dtype == "auto":
                updates[key] = value
        elif key not in explicit or getattr(settings, key) is None:
            updates[key] = value
    # A model given explicitly (file or env) keeps the preset's sampling settings but not its weights.
    if settings.model:
        updates.pop("model", None)
    return settings.model_copy(update=updates)
