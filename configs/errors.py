"""`GemsError`: the base of every error gems reports as one line (the CLI maps each to a message and an exit code)."""

from __future__ import annotations

import re
from typing import Any


class GemsError(Exception):
    """An error whose message is one line saying what was wrong and how to fix it.

    `exit_code` is what the CLI exits with: 2 for bad input the user can correct (config, arguments, files),
    1 for a failure while running (an endpoint, the store, the generator).
    """

    exit_code = 1


class ConfigError(GemsError, ValueError):
    """A configuration file or value is invalid; the message is one line naming what to fix."""

    exit_code = 2


class UsageError(GemsError, ValueError):
    """Bad command-line or request input."""

    exit_code = 2


# Control characters (terminal escapes) never reach a terminal from an error text.
_CONTROL = {c: None for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}


def one_line(text: str | None) -> str:
    """`text` on one line, with control characters (terminal escapes) removed."""
    return " ".join((text or "").split()).translate(_CONTROL)


def short(text: str | None, width: int = 90) -> str:
    """One line of at most `width` characters, cut at a word boundary (a single long word is cut), marked `…`."""
    text = one_line(text)
    if len(text) <= width:
        return text
    head = text[: width - 1]
    space = head.rfind(" ")
    if space >= width // 2:  # a word boundary not too far back
        head = head[:space]
    return head.rstrip(" ,;:") + "…"


_HOST_PORT = re.compile(r"(?:\[[^\]]*\]|[^:@\s]*)(?::\d*)?")


def shown_url(url: str | None) -> str:
    """`url` as messages may show it: without a user name or password written into it (`http://user:pw@host`).

    The host starts after the last `@` of the authority (the part before the first `/`, `?` or `#`), as URL parsers
    read it; an authority that is no host[:port] (a password holding `/`, `?` or `#`) is cut at the last `@`."""
    text = url or ""
    scheme, sep, rest = text.partition("://")
    scheme, rest = (scheme + sep, rest) if sep else ("", text)
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    if "@" in authority:
        return scheme + rest[authority.rindex("@") + 1 :]
    if "@" in rest and not _HOST_PORT.fullmatch(authority):
        return scheme + rest[rest.rindex("@") + 1 :]
    return text


def without_passwords(data: Any) -> Any:
    """A settings dump (`model_dump(mode="json")`) with every `url` and `base_url` as `shown_url` writes it and
    every header value (`memory.chroma.headers`: an auth token) hidden, for files others read (run.json, reports)."""
    if isinstance(data, list):
        return [without_passwords(v) for v in data]
    if not isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("url", "base_url") and isinstance(value, str):
            out[key] = shown_url(value)
        elif key == "headers" and isinstance(value, dict):
            out[key] = {name: "***" for name in value}
        else:
            out[key] = without_passwords(value)
    return out
