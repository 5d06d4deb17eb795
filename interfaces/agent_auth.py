"""Auth for `langgraph dev` / the Agent Server (`langgraph.json` -> `auth.path`): keys, owners, run options only.

- **Keys.** With `GEMS_API_KEY` or `GEMS_API_KEYS` (`name:key,...`) set, every request needs `X-API-Key: <key>` or
  `Authorization: Bearer <key>`; the key's name is the caller's identity. Unset: everyone is `anonymous` (local use).
- **Owners.** Threads, runs and crons carry their creator's identity in `metadata.owner`; a caller sees and
  continues only their own.
- **Run options only.** A run's or assistant's `context` may set only what `RunOptions` allows (max rounds, seed,
  images per round, human review, memory mode, skills on/off); anything else (an MLLM URL, a data folder, a store)
  is refused with 422 naming the fields, so no request can send the server's keys elsewhere or move its files.
"""

from __future__ import annotations

from typing import Any

from langgraph_sdk import Auth

from gems.configs import RunOptions
from gems.configs.settings import KEY_HELP, api_keys_from_env, key_name, offered_key

auth = Auth()
# Keys LangGraph itself puts into a run's configurable; everything else in a context is the client's.
_SERVER_KEYS = {"thread_id", "checkpoint_id", "checkpoint_ns", "checkpoint_map", "run_id", "assistant_id", "graph_id",
                "user_id", "cron_id"}  # fmt: skip


@auth.authenticate
async def authenticate(headers: dict[bytes, bytes]) -> str:
    keys = api_keys_from_env()
    if not keys:
        return "anonymous"
    decoded = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers.items()}
    name = key_name(keys, offered_key(decoded))
    if name is None:
        raise Auth.exceptions.HTTPException(status_code=401, detail=KEY_HELP)
    return name


def refuse_other_options(context: Any) -> None:
    """422 naming every context field that is not a run option (LangGraph's own keys pass)."""
    if not isinstance(context, dict) or not context:
        return
    client = {k: v for k, v in context.items() if k not in _SERVER_KEYS and not k.startswith(("__", "langgraph_"))}
    allowed = set(RunOptions.model_fields)
    extra = sorted(set(client) - allowed)
    problems = [f"{name} (not a run option)" for name in extra]
    try:
        RunOptions.model_validate({k: v for k, v in client.items() if k in allowed})
    except ValueError as exc:
        errors: list[Any] = list(getattr(exc, "errors", lambda: [])())
        problems += [".".join(str(p) for p in e.get("loc", ())) + f" ({e.get('msg')})" for e in errors]
    if problems:
        raise Auth.exceptions.HTTPException(
            status_code=422,
            detail="this server takes only run options (loop.max_rounds, loop.seed, loop.images_per_round, "
            "loop.human_review, memory.mode, skills.enabled) from a request; refused: " + ", ".join(problems),
        )


def _mine(ctx: Auth.types.AuthContext) -> dict[str, str]:
    return {"owner": ctx.user.identity}


@auth.on.threads.create
async def own_new_thread(ctx: Auth.types.AuthContext, value: Auth.types.ThreadsCreate) -> dict[str, str]:
    value.setdefault("metadata", {})["owner"] = ctx.user.identity
    return _mine(ctx)


@auth.on.threads.create_run
async def run_on_own_thread(ctx: Auth.types.AuthContext, value: Auth.types.RunsCreate) -> dict[str, str]:
    kwargs: dict[str, Any] = dict(value.get("kwargs") or {})
    refuse_other_options(kwargs.get("context"))
    value.setdefault("metadata", {})["owner"] = ctx.user.identity
    return _mine(ctx)


def _assistant_options(value: Any) -> None:
    refuse_other_options(value.get("context"))
    refuse_other_options((value.get("config") or {}).get("configurable"))


@auth.on.assistants.create
async def new_assistant(ctx: Auth.types.AuthContext, value: Auth.types.AssistantsCreate) -> None:
    _assistant_options(value)


@auth.on.assistants.update
async def changed_assistant(ctx: Auth.types.AuthContext, value: Auth.types.AssistantsUpdate) -> None:
    _assistant_options(value)


@auth.on.threads
async def own_threads(ctx: Auth.types.AuthContext, value: Any) -> dict[str, str]:
    """Read, update, delete, search and the rest: the caller's own threads only."""
    return _mine(ctx)


@auth.on.crons
async def own_crons(ctx: Auth.types.AuthContext, value: Any) -> dict[str, str]:
    return _mine(ctx)
