"""`gems serve-generator`: the configured diffusers model as a Ray Serve application (see generator_service)."""

from __future__ import annotations

import os
import signal
import sys
import time

import click

from gems.configs import ConfigError, load_settings
from gems.interfaces.cli import CONTEXT, config_option

try:  # Ray Serve comes with the optional scale extra
    from gems.interfaces import generator_service
except ImportError as exc:
    generator_service = None  # type: ignore[assignment]
    _MISSING = exc.name


@click.command(context_settings=CONTEXT)
@config_option()
@click.option("--replicas", type=click.IntRange(1, 1024), help="pipeline copies (default: one per GPU, else 1)")
@click.option("--max-batch-size", type=click.IntRange(1, 256), default=8, show_default=True, help="images per call")
@click.option(
    "--batch-wait-ms", type=click.FloatRange(0, 10_000), default=10.0, show_default=True,
    help="how long a replica waits for a batch to fill",
)  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to listen on")
@click.option("--port", type=int, default=8400, show_default=True, help="port")
@click.option("--address", help="Ray cluster to join ('auto' = the one `ray start` made here); default: a local Ray")
@click.option(
    "--request-timeout-s", type=click.FloatRange(1, 86_400), default=600.0, show_default=True,
    help="a request still running after this (upload included) gets 408 and is cancelled",
)  # fmt: skip
@click.option(
    "--keep-alive-s", type=click.IntRange(1, 3600), default=5, show_default=True,
    help="an idle connection is closed this long after its last answer (above a load balancer's idle timeout)",
)  # fmt: skip
def serve_generator(
    config: str | None,
    replicas: int | None,
    max_batch_size: int,
    batch_wait_ms: float,
    host: str,
    port: int,
    address: str | None,
    request_timeout_s: float,
    keep_alive_s: int,
) -> int:
    """Serve generator.model with Ray Serve: POST /generate?prompt=... (PNG), /v1/images/generations and edits."""
    if generator_service is None:
        missing = f"gems serve-generator needs Ray Serve ({_MISSING} is missing)"
        raise ConfigError(f"{missing}: pip install 'gems-agent[scale]'")
    settings = load_settings(config)
    api_key = os.environ.get("GEMS_API_KEY") or None
    url = generator_service.start(
        settings.generator, replicas=replicas, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
        host=host, port=port, address=address, api_key=api_key, request_timeout_s=request_timeout_s,
        keep_alive_s=keep_alive_s,
    )  # fmt: skip
    auth = "API key required" if api_key else "no auth (set GEMS_API_KEY to require one)"
    click.echo(
        f"gems generator service on {url}: POST /generate, POST /v1/images/generations, POST /v1/images/edits, "
        f"GET /health ({auth}); Ctrl-C stops it",
        err=True,
    )
    # SIGTERM (docker stop, systemd, Kubernetes) stops it as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        generator_service.stop()
    return 0
