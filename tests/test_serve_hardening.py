"""`gems serve` against hostile clients: each hardening rule refuses what it should, and what it allows still works."""

from __future__ import annotations

import pytest

from gems.configs import ConfigError, GemsSettings
from tests.test_serve import ALICE

pytestmark = pytest.mark.slow


@pytest.fixture
def app_for(tmp_path):
    pytest.importorskip("langserve")
    from gems.interfaces.serve import create_app

    def make(**options):
        return create_app(GemsSettings(data_dir=tmp_path / "data"), **options)

    return make


def test_short_keys_are_refused_at_start_up(app_for, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="at least 16 characters; GEMS_API_KEY has 5"):
        app_for(api_key="short")
    monkeypatch.setenv("GEMS_API_KEYS", f"alice:{ALICE},bob:tiny-key")
    with pytest.raises(ConfigError, match="GEMS_API_KEYS entry 'bob' has 8") as refused:
        app_for()
    assert "tiny-key" not in str(refused.value)

    from gems.interfaces.cli import main

    monkeypatch.delenv("GEMS_API_KEYS")
    monkeypatch.setenv("GEMS_API_KEY", "0123456789abcde")
    assert main(["serve", "--port", "1"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "API keys must be at least 16 characters" in line and "0123456789abcde" not in line
