"""Build and serve LangChain's Agent Chat UI for browser tests against a local LangGraph server.

Two flavours, both built into static files, so serving needs only Python (no Node at test time)
and the page talks to nothing but the `apiUrl` it is given:

- ``"github"`` (default): the current UI, github.com/langchain-ai/agent-chat-ui at commit
  ``CHAT_UI_COMMIT`` (2026-07-25, "fix: patch Dependabot dependency alerts (#300)"), the Next.js app
  that agentchat.vercel.app serves. It expects the LangChain 1.0 HITL interrupt schema
  (``action_requests`` / ``review_configs``) and resumes with ``{"decisions": [...]}``.
  The source comes from ``source=`` or ``$GEMS_AGENT_CHAT_UI_SRC`` (a checkout, or a git directory,
  bare or not, that holds the commit), else from a ``git clone`` of GitHub.
- ``"npm"``: the ``vite`` template of npm ``create-agent-chat-app@0.1.6``. Only the npm registry is
  needed, but its UI is an older snapshot: langgraph-sdk 0.0.57 and the *old* ``HumanInterrupt``
  schema (``action_request`` / ``config.allow_*``), resuming with a list of ``HumanResponse``.
  Its ``nextjs`` template is the same snapshot, slower to build; it is not offered.

How it is built (into ``<cache>/agent-chat-ui-<flavour>-<version>/site``; the build is reused when
``BUILD.json`` is there; the ``node_modules`` work folder is deleted afterwards):

- github: ``git archive`` of the commit; ``src/app/layout.tsx`` loses ``next/font/google`` (Inter),
  which fetches from Google at build time; ``next.config.mjs`` becomes a static export
  (``output: "export"``, unoptimized images, lint and type-check skipped); the edge API passthrough
  ``src/app/api`` is removed (a static export cannot have it; we connect straight to ``apiUrl``);
  ``npm install``; ``next build`` -> ``out/``.
- npm: ``npm pack create-agent-chat-app@0.1.6``; copy ``templates/vite``; drop the unpinned
  ``turbo: latest`` dev dependency; ``npm install``; ``vite build`` (no ``tsc -b``) -> ``dist/``.

The build needs Node >= 18 and npm, and the npm registry (plus GitHub for the github flavour without
a local source). Serving and testing need only 127.0.0.1.

Timings measured on a 2-core machine (Node 20.20, npm 11.19), 2026-11-30:
- github, via this module: npm install 138 s, ``next build`` (no lint/types) 263 s, total ~6.7 min
  (by hand, with lint and types: install 162 s cold, build 293 s). Site 5.8 MB.
- npm vite, via this module: npm pack + patch 4 s, npm install 88 s, ``vite build`` 82 s, total
  3m09s (by hand: install 111 s cold, ``tsc -b && vite build`` 111 s). Site 4.2 MB.
- a cached build returns in well under a second.
Both were checked end to end with headless Chromium against ``langgraph dev`` (markdown, an absolute
``http://127.0.0.1`` image, interrupts and their resume payloads, Stop).

Use::

    site = build_chat_ui()                       # minutes the first time, then instant
    with chat_ui(site, port) as base:            # python http.server on 127.0.0.1:port
        page.goto(chat_ui_url(base, "http://127.0.0.1:2024", "gems"))

The UI reads ``?apiUrl=&assistantId=`` from the query (its NEXT_PUBLIC_* settings are build-time);
a typed API key is kept in ``localStorage["lg:chat:apiKey"]`` and sent as ``X-Api-Key``.
Headless Chromium on a closed network wants ``CHROMIUM_ARGS`` and a fresh ``--user-data-dir``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

CHAT_UI_REPO = "https://github.com/langchain-ai/agent-chat-ui"
CHAT_UI_COMMIT = "fdc87e65307581b02898d33c62b3f285e56bd85b"
NPM_PACKAGE = "create-agent-chat-app"
NPM_VERSION = "0.1.6"
SOURCE_ENV = "GEMS_AGENT_CHAT_UI_SRC"
CACHE_ENV = "GEMS_TEST_CACHE"

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

_NEXT_CONFIG = """/** @type {import('next').NextConfig} */
// Patched by gems tests/support/chat_ui.py: a static export, served by python -m http.server.
const nextConfig = {
  output: "export",
  images: { unoptimized: true },
  eslint: { ignoreDuringBuilds: true },
  typescript: { ignoreBuildErrors: true },
};

export default nextConfig;
"""


def _version(flavor: str) -> str:
    if flavor == "github":
        return CHAT_UI_COMMIT[:12]
    if flavor == "npm":
        return NPM_VERSION
    raise ValueError(f"unknown Agent Chat UI flavour {flavor!r} (github or npm)")


def default_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gems-test")


def _need_node() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if not path)
        raise RuntimeError(f"building the Agent Chat UI needs node (>= 18) and npm on PATH; {missing} not found")
    out = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    match = re.match(r"v(\d+)", out)
    if not match or int(match.group(1)) < 18:
        raise RuntimeError(f"building the Agent Chat UI needs node >= 18, found {out or 'nothing'}")
    return node, npm


def _run(cmd: list[str], cwd: Path, log: Path, timeout: float) -> float:
    """Run `cmd`, appending its output to `log`; one-line RuntimeError on failure. Returns seconds."""
    env = {
        **os.environ,
        "NEXT_TELEMETRY_DISABLED": "1",
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
        "CI": "1",
    }
    start = time.monotonic()
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}  (in {cwd})\n")
        out.flush()
        try:
            proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{' '.join(cmd[:3])} ran past {timeout:.0f}s; see {log}") from None
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (exit {proc.returncode}): {tail[0][:200]}; see {log}")
    return time.monotonic() - start


def _extract_tar(data_path: Path, dest: Path) -> None:
    with tarfile.open(data_path) as tar:
        if sys.version_info >= (3, 12):
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)


def _github_source(work: Path, source: Path | str | None, log: Path) -> Path:
    """The UI's files at CHAT_UI_COMMIT, copied into work/app."""
    app = work / "app"
    source = source or os.environ.get(SOURCE_ENV)
    archive = work / "src.tar"
    if source:
        src = Path(source)
        git_dir = src / ".git" if (src / ".git").exists() else src
        is_git = (git_dir / "HEAD").exists() and (git_dir / "objects").exists()
        if is_git:
            with archive.open("wb") as out:
                proc = subprocess.run(
                    ["git", f"--git-dir={git_dir}", "archive", CHAT_UI_COMMIT], stdout=out, stderr=subprocess.PIPE
                )
            if proc.returncode != 0:
                raise RuntimeError(
                    f"{src} has no commit {CHAT_UI_COMMIT[:12]} of agent-chat-ui: {proc.stderr.decode().strip()[:200]}"
                )
        elif (src / "package.json").exists() and (src / "src" / "app" / "layout.tsx").exists():
            shutil.copytree(src, app, ignore=shutil.ignore_patterns("node_modules", ".next", "out", ".git"))
            return app
        else:
            raise RuntimeError(f"{src} is neither an agent-chat-ui checkout nor a git directory holding it")
    else:
        if not shutil.which("git"):
            raise RuntimeError(f"no git to clone {CHAT_UI_REPO}; set {SOURCE_ENV} or use flavor='npm'")
        clone = work / "clone"
        _run(["git", "clone", "--quiet", "--no-checkout", CHAT_UI_REPO, str(clone)], work, log, 600)
        with archive.open("wb") as out:
            subprocess.run(["git", "-C", str(clone), "archive", CHAT_UI_COMMIT], stdout=out, check=True)
    app.mkdir()
    _extract_tar(archive, app)
    return app


def _patch_github(app: Path) -> None:
    layout = app / "src" / "app" / "layout.tsx"
    text = layout.read_text()
    patched = text.replace('import { Inter } from "next/font/google";\n', "")
    patched = re.sub(r"const inter = Inter\(\{.*?\}\);\n", "", patched, flags=re.S)
    patched = patched.replace("<body className={inter.className}>", "<body>")
    if "next/font/google" in patched or "inter." in patched:
        raise RuntimeError(f"could not remove the Google font from {layout}; the UI source changed")
    layout.write_text(patched)
    (app / "next.config.mjs").write_text(_NEXT_CONFIG)
    shutil.rmtree(app / "src" / "app" / "api", ignore_errors=True)


def _npm_template(work: Path, npm: str, log: Path) -> Path:
    _run([npm, "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--pack-destination", str(work)], work, log, 600)
    (tgz,) = work.glob(f"{NPM_PACKAGE}-*.tgz")
    _extract_tar(tgz, work)
    app = work / "app"
    shutil.copytree(work / "package" / "templates" / "vite", app)
    package = json.loads((app / "package.json").read_text())
    package.get("devDependencies", {}).pop("turbo", None)  # "latest", and only wraps the build
    package["scripts"]["build"] = "vite build"
    (app / "package.json").write_text(json.dumps(package, indent=2) + "\n")
    return app


def build_chat_ui(
    cache: Path | None = None,
    *,
    flavor: str = "github",
    source: Path | str | None = None,
    timeout: float = 1800,
) -> Path:
    """The folder of static files of the built UI (index.html at its root); builds it if not cached."""
    version = _version(flavor)
    root = Path(cache) if cache is not None else default_cache()
    target = root / f"agent-chat-ui-{flavor}-{version}"
    if (target / "BUILD.json").exists() and (target / "site" / "index.html").exists():
        return target / "site"
    _, npm = _need_node()
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{flavor}-", dir=root))
    log = work.with_suffix(".log")
    timings: dict[str, float] = {}
    try:
        start = time.monotonic()
        if flavor == "github":
            app = _github_source(work, source, log)
            _patch_github(app)
        else:
            app = _npm_template(work, npm, log)
        timings["fetch_and_patch_s"] = round(time.monotonic() - start, 1)
        timings["npm_install_s"] = round(_run([npm, "install", "--no-audit", "--no-fund"], app, log, timeout), 1)
        built = app / ("out" if flavor == "github" else "dist")
        bundler = "next" if flavor == "github" else "vite"
        timings["build_s"] = round(_run(["npx", "--no-install", bundler, "build"], app, log, timeout), 1)
        if not (built / "index.html").exists():
            raise RuntimeError(f"the UI build left no {built / 'index.html'}; see {log}")
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        shutil.move(str(built), target / "site")
        node_version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        (target / "BUILD.json").write_text(
            json.dumps(
                {
                    "flavor": flavor,
                    "version": version,
                    "source": CHAT_UI_REPO + "@" + CHAT_UI_COMMIT
                    if flavor == "github"
                    else f"npm:{NPM_PACKAGE}@{NPM_VERSION}/templates/vite",
                    "node": node_version,
                    "timings": timings,
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
                indent=2,
            )
            + "\n"
        )
        shutil.copy(log, target / "build.log")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.unlink(missing_ok=True)
    return target / "site"


def serve_chat_ui(build: Path, port: int, host: str = "127.0.0.1") -> subprocess.Popen:
    """Serve the static UI with `python -m http.server` on host:port; returns once it accepts connections."""
    build = Path(build)
    if not (build / "index.html").exists():
        raise RuntimeError(f"{build} holds no built Agent Chat UI (no index.html); call build_chat_ui() first")
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", host, "--directory", str(build)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the static server for the Agent Chat UI exited at once (port {port} taken?)")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the Agent Chat UI server on {host}:{port} did not come up in 20 s") from None
            time.sleep(0.05)


@contextlib.contextmanager
def chat_ui(build: Path, port: int, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve the built UI for the duration of the block; yields its base URL."""
    proc = serve_chat_ui(build, port, host)
    try:
        yield f"http://{host}:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def chat_ui_url(base: str, api_url: str, assistant_id: str, **params: str) -> str:
    """The page URL that points the UI at a LangGraph server (e.g. threadId=, hideToolCalls=)."""
    return f"{base.rstrip('/')}/?{urlencode({'apiUrl': api_url, 'assistantId': assistant_id, **params})}"
