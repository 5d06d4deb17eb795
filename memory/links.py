"""Capability URLs for a run's images and pages: signed, expiring, bound to the tenant whose run made them.

A browser's `<img>` carries no API key, so an image shown in a chat message cannot sit behind header auth. Its URL
carries the proof instead: `/artifacts/<sha256>.png?t=<tenant>&e=<expiry>&s=<hmac>`. The server that signed it
(the Agent Server's `http.app`, gems serve) serves the file only when the signature matches the tenant, the name
and the expiry; a bare path, a tampered one or an expired one is refused. Run pages work the same way.

- The secret is `GEMS_URL_SECRET`, else a random one kept in `<data_dir>/url-secret` (created once, mode 0600), so
  every process sharing the data folder signs and checks alike.
- `GEMS_URL_TTL_S` (default 30 days): how long a link stays valid. Chat history keeps the links it was given, so
  an old conversation's images stop showing once its links expire. Expiries are rounded up to the hour, so one
  image gets one URL per hour (browsers cache it).
- `GEMS_PUBLIC_URL`: the base URL clients reach the server at (behind a reverse proxy, its public address); else
  `LANGGRAPH_API_URL`, which `langgraph dev` sets; else links are relative paths.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from gems.configs.settings import TENANT_PATTERN

DEFAULT_TTL_S = 30 * 24 * 3600
_SHA = re.compile(r"[0-9a-f]{64}")
_secrets: dict[Path, bytes] = {}


SHARED_IDENTITIES = ("anonymous", "default")  # callers without a tenant of their own: local use, the single key
TENANT_NAME = re.compile(TENANT_PATTERN)


def tenant_of(identity: str | None) -> str:
    """The tenant a caller's identity (an API key's name) stands for: "" for local use and the single shared key.

    Key names are checked at start-up to match `TENANT_NAME`, so the name is the tenant, in links, pages, lessons
    and the store alike.
    """
    return "" if not identity or identity in SHARED_IDENTITIES else str(identity)


def public_base() -> str:
    """Where clients reach the server: `GEMS_PUBLIC_URL`, else `LANGGRAPH_API_URL`, else "" (relative links)."""
    return (os.environ.get("GEMS_PUBLIC_URL") or os.environ.get("LANGGRAPH_API_URL") or "").rstrip("/")


def _ttl() -> int:
    try:
        return max(60, int(os.environ.get("GEMS_URL_TTL_S") or DEFAULT_TTL_S))
    except ValueError:
        return DEFAULT_TTL_S


def url_secret(data_dir: Path) -> bytes:
    """The signing key: `GEMS_URL_SECRET`, else the one kept under `data_dir` (made on first use)."""
    given = os.environ.get("GEMS_URL_SECRET")
    if given:
        return given.encode()
    path = Path(data_dir) / "url-secret"
    if path not in _secrets:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: two processes starting together agree on the first one's secret
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        text = path.read_text().strip()
        while not text:  # written by another process this instant
            time.sleep(0.01)
            text = path.read_text().strip()
        _secrets[path] = text.encode()
    return _secrets[path]


def _signature(secret: bytes, kind: str, tenant: str, subject: str, expires: int) -> str:
    digest = hmac.new(secret, f"{kind}\n{tenant}\n{subject}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def _query(secret: bytes, kind: str, tenant: str, subject: str) -> str:
    hour = 3600
    expires = (int(time.time()) + _ttl() + hour - 1) // hour * hour
    return urlencode({"t": tenant, "e": expires, "s": _signature(secret, kind, tenant, subject, expires)})


def artifact_url(secret: bytes, sha256: str, tenant: str = "") -> str:
    """The signed URL of a stored image for `tenant` ("" when the server has no tenants); `secret` from `url_secret`."""
    return f"{public_base()}/artifacts/{sha256}.png?{_query(secret, 'artifact', tenant, sha256)}"


def run_url(secret: bytes, thread_id: str, tenant: str = "") -> str:
    """The signed URL of a run's page for `tenant`."""
    return f"{public_base()}/runs/{quote(thread_id, safe='')}/?{_query(secret, 'run', tenant, thread_id)}"


def runs_url(secret: bytes, tenant: str = "") -> str:
    """The signed URL of the page listing `tenant`'s runs."""
    return f"{public_base()}/runs/?{_query(secret, 'runs', tenant, '')}"


def check(secret: bytes, kind: str, subject: str, params: dict[str, str]) -> str | None:
    """The tenant a signed link was made for, or None when it is missing, tampered with or expired.

    Args:
        secret: from `url_secret`.
        kind: `artifact`, `run` or `runs`.
        subject: the artifact's sha256, the thread id, or "" for the run list.
        params: the link's query parameters (`t`, `e`, `s`).
    """
    tenant, expires, signature = params.get("t", ""), params.get("e", ""), params.get("s", "")
    if not (signature and expires.isdigit()) or int(expires) < time.time():
        return None
    if kind == "artifact" and not _SHA.fullmatch(subject):
        return None
    wanted = _signature(secret, kind, tenant, subject, int(expires))
    return tenant if hmac.compare_digest(wanted, signature) else None
