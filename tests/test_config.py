"""Settings: presets, env overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gems.configs import ConfigError, GemsSettings, load_settings, resolve_config_path


@pytest.mark.parametrize("name", ["default", "openai", "cpu", "local", "default.yaml"])
def test_bundled_presets_load_and_validate(name):
    settings = load_settings(name, env={})
    assert isinstance(settings, GemsSettings)
    assert resolve_config_path(name).name == name.removesuffix(".yaml") + ".yaml"


def test_preset_contents_match_their_purpose():
    assert load_settings("default", env={}).generator.preset == "z-image-turbo"
    cpu = load_settings("cpu", env={})
    assert (cpu.generator.preset, cpu.generator.device) == ("sd-turbo", "cpu")
    assert (cpu.mllm.backend, cpu.mllm.model, cpu.mllm.device) == ("transformers", "Qwen/Qwen3-VL-2B-Instruct", "cpu")
    local = load_settings("local", env={})
    assert (local.generator.preset, local.mllm.backend, local.mllm.model) == (
        "z-image-turbo",
        "transformers",
        "Qwen/Qwen3-VL-8B-Instruct",
    )
    # The judge is GenEval2's own, in this process: the same weights as the roles, so loaded once.
    assert local.judge is not None and (local.judge.backend, local.judge.model) == ("transformers", local.mllm.model)
    assert GemsSettings().mllm.backend == "openai"  # the default stays a server
    hosted = load_settings("openai", env={})
    assert (hosted.generator.backend, hosted.generator.model) == ("openai", "gpt-image-1")


def test_defaults_reproduce_the_paper():
    s = GemsSettings()
    assert (s.loop.max_rounds, s.loop.images_per_round, s.loop.experience_max_words) == (5, 1, 100)
    assert s.memory.mode == "experience" and s.memory.image_window is None
    assert s.storage.checkpointer == "sqlite"


def test_env_overrides_beat_the_file_and_flags_beat_env(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mllm:\n  model: from-file\n  base_url: http://file/v1\nloop:\n  max_rounds: 4\n")
    env = {
        "GEMS_CONFIG": str(cfg),
        "GEMS_MLLM_MODEL": "from-env",
        "GEMS_DATA_DIR": str(tmp_path / "d"),
        "GEMS_GENERATOR_BACKEND": "http",
        "GEMS_GENERATOR_URL": "http://127.0.0.1:7/gen",
        "GEMS_GENERATOR_MODEL": "zit",
        "GEMS_MLLM_BASE_URL": "http://env/v1",
        "GEMS_MLLM_API_KEY": "sk-env",
    }
    s = load_settings(env=env, overrides={"loop.max_rounds": 2, "loop.seed": None})
    assert (s.mllm.model, s.mllm.base_url, s.loop.max_rounds) == ("from-env", "http://env/v1", 2)
    assert (s.generator.backend, s.generator.url, s.generator.model) == ("http", "http://127.0.0.1:7/gen", "zit")
    assert s.data_dir == tmp_path / "d" and s.artifacts_dir == tmp_path / "d" / "artifacts"
    assert s.mllm.resolved_api_key() == "sk-env"


def test_api_key_falls_back_to_openai_api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert GemsSettings().mllm.resolved_api_key() == "sk-openai"
    monkeypatch.setenv("GEMS_MLLM_API_KEY", "sk-gems")
    assert GemsSettings().mllm.resolved_api_key() == "sk-gems"
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("GEMS_MLLM_API_KEY")
    assert GemsSettings().mllm.resolved_api_key() == "EMPTY"


def test_bad_env_value_names_the_variable():
    with pytest.raises(ConfigError, match=r"\$GEMS_GENERATOR_BACKEND: generator.backend: Input should be 'diffusers'"):
        load_settings(env={"GEMS_GENERATOR_BACKEND": "comfyui"})


def test_several_errors_stay_on_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("loop:\n  max_rounds: 0\n  colour: red\nstorage:\n  checkpointer: redis\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    message = str(info.value)
    assert "\n" not in message
    assert "loop.max_rounds: Input should be greater than or equal to 1" in message
    assert "unknown key 'loop.colour'" in message and "storage.checkpointer" in message


def test_a_blank_model_name_is_refused_and_names_are_trimmed(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mllm: {model: '  '}\ngenerator: {model: ''}\njudge: {model: ' Qwen/Qwen3-VL-8B-Instruct '}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    empty = "is empty; name a model (a hub id, a local folder or the server's model name)"
    assert str(info.value) == f"invalid config {cfg}: mllm.model: {empty}; generator.model: {empty}"
    cfg.write_text("judge: {model: ' Qwen/Qwen3-VL-8B-Instruct '}\n")
    assert load_settings(cfg, env={}).judge.model == "Qwen/Qwen3-VL-8B-Instruct"


def test_empty_file_means_defaults(tmp_path):
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("")
    assert load_settings(cfg, env={}).loop.max_rounds == 5


def test_settings_serialise_without_leaking_keys():
    s = GemsSettings.model_validate({"mllm": {"api_key": "sk-secret"}})
    assert "sk-secret" not in s.model_dump_json()
    assert s.mllm.resolved_api_key() == "sk-secret"


def test_data_dir_expands_user(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    s = load_settings(env={"GEMS_DATA_DIR": "~/gems-data"})
    assert s.data_dir == Path(tmp_path) / "gems-data"


def test_whole_settings_are_used_as_given_and_partial_ones_overlay_the_env(monkeypatch, tmp_path):
    from gems.configs.loading import context_settings, is_complete, settings_from_env

    whole = load_settings("cpu", env={})
    assert is_complete(whole) and not is_complete(GemsSettings(loop={"max_rounds": 2}))
    broken = tmp_path / "broken.yaml"
    broken.write_text("loop: [")
    monkeypatch.setenv("GEMS_CONFIG", str(broken))
    settings_from_env.cache_clear()
    # A CLI run with --config never reads a broken GEMS_CONFIG behind it...
    assert context_settings(whole) is whole
    # ...while a partial context (a server's) is layered over it, so the broken file is reported.
    partial = GemsSettings(loop={"max_rounds": 2})  # what LangGraph makes of context={"loop": {"max_rounds": 2}}
    with pytest.raises(ConfigError, match="broken YAML"):
        context_settings(partial)
    good = tmp_path / "good.yaml"
    good.write_text("mllm:\n  model: from-env-config\n")
    monkeypatch.setenv("GEMS_CONFIG", str(good))
    settings_from_env.cache_clear()
    merged = context_settings(partial)
    assert (merged.loop.max_rounds, merged.mllm.model) == (2, "from-env-config")
