"""How settings are read: YAML files or presets, `GEMS_*` env vars and CLI overrides (`load_settings`, the one
loader), a run's context (`context_settings`), and the digests that tell one run's settings from another's."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from gems.configs.errors import ConfigError, UsageError
from gems.configs.settings import PINNED, GemsSettings, RunLoop, RunOptions

# env var -> dotted settings key; these are the knobs people change most.
ENV_OVERRIDES = {
    "GEMS_DATA_DIR": "data_dir",
    "GEMS_MLLM_BASE_URL": "mllm.base_url",
    "GEMS_MLLM_MODEL": "mllm.model",
    "GEMS_MLLM_API_KEY": "mllm.api_key",
    "GEMS_GENERATOR_BACKEND": "generator.backend",
    "GEMS_GENERATOR_URL": "generator.url",
    "GEMS_GENERATOR_MODEL": "generator.model",
}

PRESET_CONFIGS = ("default", "openai", "cpu", "local")


def resolve_config_path(name: str | os.PathLike[str]) -> Path:
    """Return the YAML file for a path, or for a bundled preset name such as `cpu`."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    stem = str(name).removesuffix(".yaml")
    if stem in PRESET_CONFIGS or stem.startswith("ablations/"):
        bundled = resources.files("gems.configs").joinpath(f"{stem}.yaml")
        if bundled.is_file():
            return Path(str(bundled))
    raise ConfigError(
        f"config file not found: {name} (give a path to a YAML file or one of: {', '.join(PRESET_CONFIGS)})"
    )


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[leaf] = value


def _format_validation_error(source: str, err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'")
        elif item["type"] == "value_error" and not item["loc"]:  # a check across sections says it all itself
            parts.append(str(item["msg"]).removeprefix("Value error, "))
        else:
            parts.append(f"{loc}: {str(item['msg']).removeprefix('Value error, ')}")
    return f"invalid config {source}: " + "; ".join(parts)


def read_config_file(path: Path) -> dict[str, Any]:
    """Read one YAML config file into a dict, with a one-line error for unreadable or malformed files."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"broken YAML in config {path}{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {path}: the top level must be a mapping of keys, not {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


ConfigPaths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None


def _config_files(path: ConfigPaths, env: Mapping[str, str]) -> list[str | os.PathLike[str]]:
    """The config files to merge, in order: `path` (one or several), else `GEMS_CONFIG`, else none."""
    chosen = path if path is not None else env.get("GEMS_CONFIG") or None
    if chosen is None:
        return []
    return [chosen] if isinstance(chosen, str | os.PathLike) else list(chosen)


def load_settings(
    path: ConfigPaths = None,
    overrides: dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> GemsSettings:
    """Load settings: defaults < YAML file (`path` or `GEMS_CONFIG`) < `GEMS_*` env vars < `overrides`.

    Args:
        path: a YAML file or bundled preset name, or several merged in order (later files win key by key);
            `None` uses `GEMS_CONFIG` when set.
        overrides: dotted keys to values, e.g. `{"loop.max_rounds": 3}` (CLI flags).
        env: the environment to read (default `os.environ`).

    Raises:
        ConfigError: with a one-line message naming the file and the bad key.
    """
    env = os.environ if env is None else env
    source = "(defaults)"
    data: dict[str, Any] = {}
    for one in _config_files(path, env):
        file = resolve_config_path(one)
        source = str(file) if source == "(defaults)" else f"{source} + {file}"
        data = _deep_merge(data, read_config_file(file))
    for var, dotted in ENV_OVERRIDES.items():
        if env.get(var):
            _set_dotted(data, dotted, env[var])
            source = f"{source} + ${var}" if source != "(defaults)" else f"${var}"
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    try:
        settings = GemsSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None
    return complete(settings.model_copy(update={"data_dir": settings.data_dir.expanduser()}))


def configured_value(path: ConfigPaths, dotted: str, env: Mapping[str, str] | None = None) -> Any:
    """The value the config files themselves give a dotted key (None when no file sets it; defaults don't count)."""
    data: dict[str, Any] = {}
    for one in _config_files(path, os.environ if env is None else env):
        data = _deep_merge(data, read_config_file(resolve_config_path(one)))
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def cache_key(settings: BaseModel) -> str:
    """A key for per-process client caches: the settings as JSON, secrets included (never log it)."""

    def reveal(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, dict):
            return {k: reveal(v) for k, v in value.items()}
        return value

    return json.dumps(reveal(settings.model_dump(mode="python")), sort_keys=True, default=str)


def is_complete(settings: GemsSettings) -> bool:
    """True for settings from `load_settings` (every section given), False for a partial context."""
    return settings.model_fields_set >= set(GemsSettings.model_fields)


def complete(settings: GemsSettings) -> GemsSettings:
    """Mark every field as explicitly set, so `overlay` treats these settings as whole, not partial."""
    return GemsSettings.model_validate(settings.model_dump(mode="python", round_trip=True))


def overlay(base: BaseModel, partial: BaseModel) -> Any:
    """`base` with the fields `partial` explicitly sets (recursively), e.g. a server's context over the env config."""
    updates: dict[str, Any] = {}
    for name in partial.model_fields_set:
        value = getattr(partial, name)
        current = getattr(base, name)
        updates[name] = (
            overlay(current, value) if isinstance(value, BaseModel) and isinstance(current, BaseModel) else value
        )
    return base.model_copy(update=updates)


@functools.lru_cache(maxsize=1)
def settings_from_env() -> GemsSettings:
    """Settings from `GEMS_CONFIG` and `GEMS_*`, read once per process (servers that pass no whole context)."""
    return load_settings()


def context_settings(context: Any) -> GemsSettings:
    """The run's settings from a graph's context: `RunOptions`, `GemsSettings` (whole or partial), or None.

    LangGraph makes the context schema's type from whatever a caller passed. `RunOptions` (what the served graph
    takes from clients) and a partial `GemsSettings` (say `{"loop": {"max_rounds": 2}}` from trusted code) overlay
    the settings from `GEMS_CONFIG` and `GEMS_*`; settings from `load_settings` are whole and used as they are.
    """
    if isinstance(context, RunOptions):
        return context.apply(settings_from_env())
    if isinstance(context, GemsSettings):
        return context if is_complete(context) else overlay(settings_from_env(), context)
    return settings_from_env()


# What never changes the images a run makes (a bench folder's identity ignores it), and what a resumed run may
# also move (a server on a new host or port, another tenant's name for the same work).
OUTPUT_IGNORES = frozenset({"data_dir", "storage", "api_key", "timeout_s", "max_retries", "verifier_concurrency",
                            "chroma"})  # fmt: skip
RESUME_IGNORES = OUTPUT_IGNORES | {"base_url", "url", "headers", "host", "port", "tenant"}
# Run options a resume may differ in without being another run (refine_mode changes how rounds are made: not here).
RUN_OPTIONS = frozenset(PINNED) - {"refine_mode"}


def strip_keys(data: Any, ignore: frozenset[str]) -> Any:
    """`data` (nested dicts) without the keys in `ignore`, at any depth."""
    if isinstance(data, dict):
        return {k: strip_keys(v, ignore) for k, v in data.items() if k not in ignore}
    return data


def settings_digest(settings: GemsSettings, ignore: frozenset[str] = RESUME_IGNORES) -> str:
    """sha256 (16 hex) of the settings left after dropping `ignore`d keys: what decides the images a run makes."""
    text = json.dumps(strip_keys(settings.model_dump(mode="json"), ignore), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pinned_options(settings: GemsSettings) -> dict[str, Any]:
    """The run options to pin in a run's first checkpoint, plus the digest of the settings that make its images."""
    options = {key: getattr(settings.loop, key) for key in PINNED}
    options["config_digest"] = settings_digest(settings, RESUME_IGNORES | RUN_OPTIONS)
    return options


def checked_options(options: Any) -> dict[str, Any]:
    """Pinned run options from a run's input or state, within the bounds `RunLoop` defines.

    Raises:
        UsageError: not a mapping, an unknown key, or a value out of bounds; one line naming it.
    """
    if not isinstance(options, Mapping):
        raise UsageError("options must be an object of run options")
    unknown = sorted(set(options) - {*PINNED, "config_digest"})
    if unknown:
        raise UsageError(f"options: unknown {', '.join(map(str, unknown))}; known: {', '.join(PINNED)}")
    given = {k: options[k] for k in PINNED if k in options and options[k] is not None}
    try:
        loop = RunLoop.model_validate(given)
    except ValidationError as exc:
        raise UsageError(_format_validation_error("options", exc).removeprefix("invalid config ")) from None
    digest = options.get("config_digest")
    return {**loop.model_dump(exclude_none=True), **({"config_digest": str(digest)[:64]} if digest else {})}
