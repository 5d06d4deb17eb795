"""`python -m gems.interfaces.cli`: the `gems` command."""

from gems.interfaces.cli import run

run()
