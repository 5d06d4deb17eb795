"""What people look at, in a real headless Chromium: the LangServe playground, signing in, a run's page, the bench
gallery. Console errors fail a test; each page's screenshot is written to `test-artifacts/screenshots/` (or
`$GEMS_TEST_ARTIFACTS/screenshots/`) for a reviewer.

Chromium comes from the system (Debian's `chromium`, installed by `.ci/run`); Playwright drives it through
`executable_path`, so no browser is downloaded. Without one the tests skip, except where `GEMS_REQUIRE_BROWSER=1`
(CI) makes that a failure.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gems.interfaces.benchmarks.runner import run_bench
from gems.interfaces.cli import main as gems_main
from tests.conftest import make_settings
from tests.support.net import write_stub_config
from tests.test_serve import KEY, served  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("GEMS_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "screenshots"
pytestmark = pytest.mark.slow


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    if executable is None:
        if os.environ.get("GEMS_REQUIRE_BROWSER") == "1":
            pytest.fail("GEMS_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


class Page:
    """A fresh browser context and page that records console errors and uncaught exceptions."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on(
            "console",
            lambda m: self.errors.append(f"{m.text} ({m.location.get('url')})") if m.type == "error" else None,
        )
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("response", lambda r: self.errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)

    def _console(self, message) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} ({message.location.get('url')})")

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def images_loaded(self) -> list[int]:
        """naturalWidth of every <img>: 0 means it did not load."""
        return self.page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")


def test_playground_renders_and_a_run_from_its_form_completes(browser, served, isolated_env):  # noqa: F811
    from playwright.sync_api import expect

    server, _, _ = served(api_key=None)
    with server:
        view = Page(browser)
        page = view.page
        page.goto(f"{server.url}/gems/playground/")
        page.locator("label", has_text="Prompt").wait_for()
        view.shot("playground")
        assert view.errors == []
        page.locator("textarea").first.fill("a red cat")
        page.get_by_role("button", name="Start").click()
        box = page.locator("h2", has_text="Output").locator("xpath=following-sibling::div[1]")
        expect(box).to_contain_text("done: all criteria passed", timeout=60_000)
        view.shot("playground-after-run")
        output = box.inner_text()
        assert view.errors == []
        # The output starts with the final image and the run's page, then one short line per step; no JSON wall
        # and no server path anywhere on the page.
        lines = output.splitlines()
        assert lines[0].startswith("Final image: /artifacts/") and lines[1].startswith("Run page: /runs/")
        assert "round 1: 1 image(s) /artifacts/" in output and "round 2: 2/2 criteria passed" in output
        assert len(lines) < 30 and max(map(len, lines)) <= 200 and "{" not in output
        assert str(isolated_env) not in page.content() and '"path"' not in page.content()
        image_url, run_path = lines[0].removeprefix("Final image: "), lines[1].removeprefix("Run page: ")
        answer = page.request.get(f"{server.url}{image_url}")
        assert answer.status == 200 and answer.headers["content-type"] == "image/png"

        page.goto(f"{server.url}{run_path}")
        view.shot("run-page-served")
        assert view.errors == [] and page.locator(".round").count() == 2
        assert all(width > 0 for width in view.images_loaded())
        assert page.locator(".round.final").count() == 1
        assert page.locator(".round.final img").get_attribute("src") == image_url


@contextlib.contextmanager
def _page_server():
    """Another origin on this host: a real listener (from a page Playwright fulfilled itself, fetch failed)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(b"<!doctype html><title>elsewhere</title>")

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_browser_signs_in_once_and_a_wrong_key_is_refused(browser, served):  # noqa: F811
    from playwright.sync_api import expect

    server, _, gen = served()
    with server:
        view = Page(browser)
        page = view.page
        page.goto(f"{server.url}/gems/playground/")
        assert page.url == f"{server.url}/signin"  # sent to sign in, not a JSON 401
        view.shot("signin")
        page.fill("input[name=key]", "not-the-key")
        with page.expect_response(f"{server.url}/signin") as refused:
            page.click("button[type=submit]")
        assert refused.value.status == 401 and page.get_by_text("Wrong key.").is_visible()
        assert view.context.cookies() == []
        page.fill("input[name=key]", KEY)
        page.click("button[type=submit]")
        page.locator("label", has_text="Prompt").wait_for()
        view.shot("playground-signed-in")
        assert page.url == f"{server.url}/gems/playground/" and KEY not in page.url
        (cookie,) = view.context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]  # plain http here
        assert KEY not in cookie["value"]
        # Console errors before sign-in are the refused POST's 401; none after it.
        assert [e for e in view.errors if "401" not in e] == []
        # Programs keep using headers; a header-less request without the cookie is still refused.
        assert page.request.get(f"{server.url}/artifacts/{'0' * 64}.png").status == 404  # authorised, just absent
        assert view.context.request.get(f"{server.url}/gems/input_schema").status == 200
        fresh = browser.new_context()
        assert fresh.request.get(f"{server.url}/gems/input_schema").status == 401
        fresh.close()

        # Signed in, the playground runs: its POSTs carry this origin and JSON, as the cookie now requires.
        page.locator("textarea").first.fill("a red cat")
        page.get_by_role("button", name="Start").click()
        box = page.locator("h2", has_text="Output").locator("xpath=following-sibling::div[1]")
        expect(box).to_contain_text("done: all criteria passed", timeout=60_000)
        # A page on another port of this host is the same site, so the cookie goes along: it still cannot start a
        # run by posting text/plain JSON (no preflight) to /gems/invoke.
        with _page_server() as elsewhere:
            page.goto(f"{elsewhere}/")
            with page.expect_response(f"{server.url}/gems/invoke") as forged:
                page.evaluate(
                    """url => fetch(url, {method: "POST", mode: "no-cors", credentials: "include",
                        headers: {"Content-Type": "text/plain"}, body: JSON.stringify({input: {prompt: "forged"}})})""",
                    f"{server.url}/gems/invoke",
                )
        assert forged.value.status == 403 and "forged" not in gen.prompts


def test_the_run_page_and_the_bench_gallery_open_with_every_image(browser, stubs, tmp_path):
    s = stubs(criteria=["Is there a cat?", "Is the cat red?"], verdict=lambda q, n: "yes" if n >= 2 else "no")
    config = write_stub_config(tmp_path / "c.yaml", s.mllm.base_url, s.gen.url)
    out = tmp_path / "run"
    assert gems_main(["generate", "a red cat", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    view = Page(browser)
    view.page.goto((out / "index.html").as_uri())
    view.shot("run-page")
    assert view.errors == [] and view.page.locator(".round").count() == 2
    assert all(width > 0 for width in view.images_loaded()) and len(view.images_loaded()) == 2
    assert "a red cat" in view.page.inner_text("h1") and view.page.locator(".round.final").count() == 1

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere\n")
    settings = make_settings(s.mllm, s.gen, s.data_dir, skills={"enabled": False})
    # Playwright's sync API holds this thread's event loop; the bench runs its own in another thread.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(
            run_bench, prompts, settings, "gems", tmp_path / "bench", scorer="verifier", progress=False
        ).result()
    view.page.goto((tmp_path / "bench" / "report.html").as_uri())
    view.shot("bench-gallery")
    rounds = view.page.locator(".round").count()
    assert view.errors == [] and rounds >= 2 and len(view.images_loaded()) == rounds
    assert all(width > 0 for width in view.images_loaded())
