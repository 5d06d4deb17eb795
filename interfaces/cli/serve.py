"""`gems serve`: the graph behind a LangServe endpoint (uvicorn)."""

from __future__ import annotations

import click

from gems.configs import load_settings
from gems.interfaces.cli import CONTEXT, config_option
from gems.interfaces.keys import api_keys_from_env
from gems.interfaces.serve import create_app, uvicorn_options


@click.command(context_settings=CONTEXT)
@config_option()
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to listen on")
@click.option("--port", type=int, default=8321, show_default=True, help="port")
@click.option("--max-concurrent", type=int, default=2, show_default=True, help="runs executing at once")
@click.option("--queue-timeout", type=float, default=30.0, show_default=True, help="seconds a request waits before 429")
def serve(config: str | None, host: str, port: int, max_concurrent: int, queue_timeout: float) -> int:
    """Serve the graph over HTTP with LangServe: /gems/invoke, /gems/stream, /gems/batch, /gems/playground/."""
    # uvicorn comes with the serve extra; create_app says so in one line when it is missing, and refuses short keys.
    app = create_app(load_settings(config), max_concurrent=max_concurrent, queue_timeout_s=queue_timeout)
    import uvicorn

    keys = api_keys_from_env()
    auth = (
        f"{len(keys)} API key(s); browsers sign in at /signin" if keys else "no auth (set GEMS_API_KEY to require one)"
    )
    click.echo(f"gems serving on http://{host}:{port}/gems ({auth})", err=True)
    # Header, keep-alive and connection limits: uvicorn's defaults hold half-open connections forever.
    uvicorn.run(app, host=host, port=port, log_level="warning", **uvicorn_options())
    return 0
