"""Diffusers presets: the settings the reference GEMS servers use, filled in where the config leaves a gap."""

from __future__ import annotations

from typing import Any

from gems.configs import ConfigError, GemsSettings, GeneratorSettings
from gems.configs.settings import NO_EDITOR

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


# Image editors (loop.refine_mode edit | auto): the settings their model cards use.
EDIT_PRESETS: dict[str, dict[str, Any]] = {
    # Qwen-Image-Edit-2511 (QwenImageEditPlusPipeline): real CFG through true_cfg_scale with a blank negative prompt.
    "qwen-image-edit-2511": {
        "model": "Qwen/Qwen-Image-Edit-2511",
        "steps": 40,
        "guidance_scale": 1.0,
        "negative_prompt": " ",
        "call_kwargs": {"true_cfg_scale": 4.0},
        "dtype": "bfloat16",
    },
    # FLUX.1 Kontext [dev] (FluxKontextPipeline): guidance-distilled, 28 steps at guidance 2.5.
    "flux-kontext": {
        "model": "black-forest-labs/FLUX.1-Kontext-dev",
        "steps": 28,
        "guidance_scale": 2.5,
        "dtype": "bfloat16",
    },
}


def effective_settings(
    settings: GeneratorSettings, presets: dict[str, dict[str, Any]] = PRESETS, section: str = "generator"
) -> GeneratorSettings:
    """Fill unset fields from the preset (diffusers only); explicit settings always win."""
    if settings.backend != "diffusers" or not settings.preset:
        if settings.backend == "diffusers" and not settings.model:
            raise ConfigError(f"{section}.model is not set: give a diffusers model id or folder, or a preset")
        return settings
    if settings.preset not in presets:
        raise ConfigError(f"unknown {section}.preset {settings.preset!r}; choose one of: {', '.join(presets)}")
    preset = presets[settings.preset]
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


def editor_settings(settings: GemsSettings) -> GeneratorSettings:
    """The editor as concrete backend settings (`diffusers` or `openai`), its preset filled in.

    `editor.backend: generator` takes the generator's settings, with any editor field set explicitly on top.

    Raises:
        ConfigError: no editor is configured, or the generator's backend cannot edit.
    """
    editor = settings.editor
    if editor.backend == "none":
        raise ConfigError(NO_EDITOR.format(mode=settings.loop.refine_mode))
    # Fields that differ from their defaults (complete settings mark every field as set, so that cannot tell).
    fields = {
        k: getattr(editor, k)
        for k, info in type(editor).model_fields.items()
        if k not in ("backend", "preset") and getattr(editor, k) != info.get_default(call_default_factory=True)
    }
    if editor.backend == "generator":
        base = effective_settings(settings.generator)
        if base.backend == "http":
            raise ConfigError(
                "editor.backend generator needs a diffusers or openai generator (the http protocol has no edits); "
                "set editor.backend to diffusers or openai"
            )
        return base.model_copy(update=fields)
    concrete = GeneratorSettings(backend=editor.backend, preset=editor.preset, **fields)
    # The preset is applied here; the result names none (generator presets are another list).
    return effective_settings(concrete, EDIT_PRESETS, "editor").model_copy(update={"preset": None})
