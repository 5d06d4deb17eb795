"""Static tools resolve `gems.*` through the developer install, and the package type-checks (mypy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["gems.graph", "gems.nodes", "gems.memory", "gems.skills", "gems.configs", "gems.interfaces"]


@pytest.mark.slow
def test_mypy_resolves_every_gems_import_and_finds_no_errors(tmp_path):
    # From an empty folder, so the checkout's top-level folders cannot stand in for the installed package.
    args = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path)]
    for package in PACKAGES:
        args += ["-p", package]
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    unresolved = [line for line in output.splitlines() if "import-not-found" in line or "Can't find package" in line]
    assert not unresolved, "install with: pip install -e . --config-settings editable_mode=strict\n" + output
    assert result.returncode == 0, output
