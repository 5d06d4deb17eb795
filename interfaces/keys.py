"""API keys for the servers: which key a request offers, whose it is, and which keys a server may start with.

`GEMS_API_KEYS` (`name:key,name:key`: each name a tenant) or `GEMS_API_KEY` (one key, named `default`: one shared
space); neither: no auth (local use). `gems serve`, the Agent Server's auth handler and the generator service read
keys here.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

from gems.configs import ConfigError
from gems.memory.links import TENANT_NAME

MIN_KEY_CHARS = 16
KEY_HELP = "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


def offered_key(headers: Mapping[str, str]) -> str:
    """The key a request offers: `X-API-Key`, else an `Authorization: Bearer` token (header names lower-case)."""
    auth = headers.get("authorization") or ""
    bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    return headers.get("x-api-key") or bearer


def key_name(keys: Mapping[str, str], offered: str) -> str | None:
    """The name of the key `offered` matches, compared in constant time against every key; None for no match."""
    found = None
    for name, key in keys.items():
        if offered and hmac.compare_digest(offered.encode(), key.encode()):
            found = name
    return found


def api_keys_from_env() -> dict[str, str]:
    """`GEMS_API_KEYS` (`name:key,name:key`) or `GEMS_API_KEY` (one key named `default`); empty: no auth.

    Raises:
        ConfigError: an entry of `GEMS_API_KEYS` is not `name:key`.
    """
    keys: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in os.environ.get("GEMS_API_KEYS", "").split(","))):
        name, sep, key = entry.partition(":")
        if not (sep and name.strip() and key.strip()):
            raise ConfigError("GEMS_API_KEYS must be comma-separated name:key pairs (e.g. alice:k1,bob:k2)")
        keys[name.strip()] = key.strip()
    single = os.environ.get("GEMS_API_KEY")
    if single and single not in keys.values():
        keys["default"] = single
    return keys


def check_keys(keys: Mapping[str, str]) -> None:
    """Refuse keys short enough to guess (at least MIN_KEY_CHARS characters each), the same key under two names, and
    names that cannot be a tenant's (letters, digits, `_ -`; the name is the tenant everywhere).

    Raises:
        ConfigError: naming the rule and the key's name (never the key).
    """
    if len(set(keys.values())) < len(keys):
        raise ConfigError("two entries of GEMS_API_KEYS (or it and GEMS_API_KEY) share a key; give each its own")
    for name, key in keys.items():
        if not TENANT_NAME.fullmatch(name):
            raise ConfigError(f"GEMS_API_KEYS names are tenants: 1-64 letters, digits, '_' or '-', not {name!r}")
        if len(key) < MIN_KEY_CHARS:
            where = "GEMS_API_KEY" if name == "default" else f"the GEMS_API_KEYS entry {name!r}"
            raise ConfigError(
                f"API keys must be at least {MIN_KEY_CHARS} characters; {where} has {len(key)} "
                "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(24))')"
            )
