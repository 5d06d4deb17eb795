"""Auth for `langgraph dev` / the Agent Server (`langgraph.json` -> `auth.path`): keys, owners, bounded requests.

- **Keys.** With `GEMS_API_KEY` or `GEMS_API_KEYS` (`name:key,...`) set, every request needs `X-API-Key: <key>` or
  `Authorization: Bearer <key>`; the key's name is the caller's identity. Unset: everyone is `anonymous` (local use).
- **Owners.** Threads, runs, crons and assistants carry their creator's identity in `metadata.owner`, set here and
  never changed by a client; a caller sees, changes and deletes only its own (assistants the server made for its
  graphs can be read by everyone, changed by no one).
- **The store** is confined per tenant: a caller with a key of `GEMS_API_KEYS` reads, writes, deletes and lists only
  under `("gems", "tenants", <name>)`, where its lessons live. Local use and the single `GEMS_API_KEY` share one space.
- **Run options only.** A run's, cron's or assistant's `context` may set only what `RunOptions` allows; anything else
  (an MLLM URL, a data folder, a store) is refused with 422 naming the fields. A run's input must hold a request
  (`prompt`, or `messages` ending with a person's message), else 422 in one line.
- **Accept.** A review's `{}` or `null` resume (LangGraph reads `{}` as an empty map of interrupt ids and fails on
  `null`) is taken as `"accept"`.

The run's images and pages (`interfaces/agent_app.py`) use signed links, checked there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langgraph_sdk import Auth

from gems.configs import RunOptions, UsageError
from gems.configs.loading import checked_options
from gems.interfaces.keys import KEY_HELP, api_keys_from_env, check_keys, key_name, offered_key

auth = Auth()
check_keys(api_keys_from_env())  # at start-up: a key short enough to guess stops the server, in one line
# Keys LangGraph itself puts into a run's configurable; everything else in a context is the client's.
_SERVER_KEYS = {"thread_id", "checkpoint_id", "checkpoint_ns", "checkpoint_map", "run_id", "assistant_id", "graph_id",
                "user_id", "cron_id"}  # fmt: skip
SHARED = ("anonymous", "default")  # identities without a tenant of their own
NO_REQUEST = 'a run needs a request: {"prompt": "..."} or {"messages": [...]} ending with a human message'


def _refuse(status: int, detail: str) -> Auth.exceptions.HTTPException:
    return Auth.exceptions.HTTPException(status_code=status, detail=detail)


@auth.authenticate
async def authenticate(headers: dict[bytes, bytes]) -> str:
    keys = api_keys_from_env()
    if not keys:
        return "anonymous"
    decoded = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers.items()}
    name = key_name(keys, offered_key(decoded))
    if name is None:
        raise _refuse(401, KEY_HELP)
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
        raise _refuse(
            422,
            "this server takes only run options (loop.max_rounds, loop.seed, loop.images_per_round, "
            "loop.human_review, loop.review_rounds, loop.refine_mode, memory.mode, skills.enabled) from a request; "
            "refused: " + ", ".join(problems),
        )


def _has_request(messages: Any) -> bool:
    """True when the last message is a person's with some text (an image alone says nothing to do)."""
    if not isinstance(messages, list) or not messages:
        return False
    last = messages[-1]
    if not isinstance(last, Mapping) or (last.get("type") or last.get("role")) not in ("human", "user"):
        return False
    content = last.get("content")
    if isinstance(content, str):
        return bool(content.strip())
    return isinstance(content, list) and any(
        (isinstance(b, str) and b.strip()) or (isinstance(b, Mapping) and b.get("type") == "text"
                                                and str(b.get("text") or "").strip())
        for b in content
    )  # fmt: skip


def check_input(value: Any) -> None:
    """422 in one line for a run input that holds no request, or options out of bounds."""
    if value is None:
        return  # a resume, or a run of a thread that is waiting
    if not isinstance(value, Mapping):
        raise _refuse(422, NO_REQUEST)
    prompt, messages = value.get("prompt"), value.get("messages")
    if prompt is not None and not isinstance(prompt, str):
        raise _refuse(422, "prompt must be a string")
    if not (isinstance(prompt, str) and prompt.strip()) and not _has_request(messages):
        raise _refuse(422, NO_REQUEST)
    if value.get("options") is not None:
        try:
            checked_options(value["options"])
        except UsageError as exc:
            raise _refuse(422, str(exc)) from None


def _accept_empty_resume(kwargs: dict[str, Any]) -> None:
    """A command that resumes with nothing (`{}`, `null`, or a null the client left out) accepts the review."""
    command = kwargs.get("command")
    quiet = isinstance(command, dict) and not command.get("goto") and not command.get("update")
    if quiet and command.get("resume") in (None, {}):  # type: ignore[union-attr]
        command["resume"] = "accept"  # type: ignore[index]


def _mine(ctx: Auth.types.AuthContext) -> dict[str, str]:
    return {"owner": ctx.user.identity}


def _own(ctx: Auth.types.AuthContext, value: Any) -> dict[str, str]:
    """Stamp the caller as the owner of what it creates, whatever metadata it sent (no one may claim to be the
    server either: `created_by: system` marks the server's own assistants)."""
    metadata = value.get("metadata")
    if not isinstance(metadata, dict):
        metadata = value["metadata"] = {}
    metadata.pop("created_by", None)
    metadata["owner"] = ctx.user.identity
    return _mine(ctx)


@auth.on.threads.create
async def own_new_thread(ctx: Auth.types.AuthContext, value: Auth.types.ThreadsCreate) -> dict[str, str]:
    return _own(ctx, value)


@auth.on.threads.update
async def keep_thread_owner(ctx: Auth.types.AuthContext, value: Auth.types.ThreadsUpdate) -> dict[str, str]:
    metadata = value.get("metadata") or {}
    if "owner" in metadata and metadata["owner"] != ctx.user.identity:
        raise _refuse(403, "metadata.owner cannot be changed")
    return _mine(ctx)


@auth.on.threads.create_run
async def run_on_own_thread(ctx: Auth.types.AuthContext, value: Auth.types.RunsCreate) -> dict[str, str]:
    kwargs: dict[str, Any] = value.get("kwargs") or {}
    refuse_other_options(kwargs.get("context"))
    if not kwargs.get("command"):  # a resume may come with an empty input ({}, as Agent Chat UI sends it)
        check_input(kwargs.get("input"))
    _accept_empty_resume(kwargs)
    return _own(ctx, value)


@auth.on.threads
async def own_threads(ctx: Auth.types.AuthContext, value: Any) -> dict[str, str]:
    """Read, delete, search and the rest: the caller's own threads only."""
    return _mine(ctx)


def _assistant_options(value: Any) -> None:
    refuse_other_options(value.get("context"))
    refuse_other_options((value.get("config") or {}).get("configurable"))


@auth.on.assistants.create
async def new_assistant(ctx: Auth.types.AuthContext, value: Auth.types.AssistantsCreate) -> dict[str, str]:
    _assistant_options(value)
    return _own(ctx, value)


@auth.on.assistants.update
async def changed_assistant(ctx: Auth.types.AuthContext, value: Auth.types.AssistantsUpdate) -> dict[str, str]:
    _assistant_options(value)
    metadata = value.get("metadata") or {}
    if "owner" in metadata and metadata["owner"] != ctx.user.identity:
        raise _refuse(403, "metadata.owner cannot be changed")
    return _mine(ctx)  # only the owner's: the server's own assistants (no owner) are not changed by clients


@auth.on.assistants.delete
async def drop_assistant(ctx: Auth.types.AuthContext, value: Any) -> dict[str, str]:
    return _mine(ctx)


@auth.on.assistants.search
async def search_assistants(ctx: Auth.types.AuthContext, value: Any) -> dict[str, str] | None:
    """A search lists the caller's own assistants; the server's own (made for its graphs) when asked for them."""
    if ctx.user.identity in SHARED or ((value or {}).get("metadata") or {}).get("created_by") == "system":
        return None
    return _mine(ctx)


@auth.on.assistants.read
async def read_assistant(ctx: Auth.types.AuthContext, value: Any) -> None:
    """Reading one by its id: allowed (runs read the server's assistants; ids are random UUIDs, never listed)."""


@auth.on.crons.create
async def new_cron(ctx: Auth.types.AuthContext, value: Auth.types.CronsCreate) -> dict[str, str]:
    payload = value.get("payload") or {}
    refuse_other_options(payload.get("context"))
    refuse_other_options((payload.get("config") or {}).get("configurable"))
    check_input(payload.get("input"))
    return _own(ctx, value)


@auth.on.crons
async def own_crons(ctx: Auth.types.AuthContext, value: Any) -> dict[str, str]:
    return _mine(ctx)


@auth.on.store
async def own_store(ctx: Auth.types.AuthContext, value: Any) -> None:
    """Each tenant's store is `("gems", "tenants", <name>, ...)`: reads, writes, deletes and listings stay in it.

    The single shared key (`GEMS_API_KEY`, named `default`) keeps to `("gems", "lessons")`, so beside named tenants
    it reaches none of theirs; without keys (local use) the one user has the whole store.
    """
    identity = ctx.user.identity
    if identity == "anonymous":
        return
    mine = ("gems", "lessons") if identity == "default" else ("gems", "tenants", identity)
    namespace = tuple(value.get("namespace") or ())
    if ctx.action == "list_namespaces" and len(namespace) < len(mine) and mine[: len(namespace)] == namespace:
        value["namespace"] = mine  # a listing from higher up lists the caller's own part
        return
    if namespace[: len(mine)] != mine:
        raise _refuse(403, f"the store is yours under {'/'.join(mine)} only")


@auth.on.crons.update
async def changed_cron(ctx: Auth.types.AuthContext, value: Any) -> dict[str, str]:
    payload = value.get("payload") or value
    refuse_other_options(payload.get("context"))
    refuse_other_options((payload.get("config") or {}).get("configurable"))
    if payload.get("input") is not None:
        check_input(payload.get("input"))
    return _mine(ctx)
