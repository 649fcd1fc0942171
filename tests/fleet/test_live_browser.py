"""The live stream end to end in real headless Chromium on the session's fleet (issue 19): the example frontend open
from two hosts, and in eight tabs of a third, as a user sees it after `fab data-set`, an agent's SIGKILL and
`fab rollout`. One browser for the module (Debian's chromium driven by Playwright, never a downloaded one); a
screenshot of every page after each test, under test-artifacts/live-browser/<test>/ (git-ignored)."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.fleet.deployment import REPO, Deployment, wait_until
from tests.fleet.fab_builds import fab_json, rollout
from tests.fleet.helpers import EXAMPLE_BUILD, agent_pid, example_build_with

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(300)]

CHROMIUM = Path("/usr/bin/chromium")
# Headless on a machine without a GPU, as root (no sandbox), and nothing that talks to Google's servers.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts" / "live-browser"
TABS = 8  # more than the 6 HTTP/1.1 connections a browser opens per origin: a stream per tab would leave two hanging
LIVE_SOCKET = "/run/sync-agent/live.sock"

# Every page records what its banner shows and when (the page's clock is the controller's: same machine), so a
# test reads when each page showed a change rather than when it happened to look.
RECORD_BANNER = """
window.__banners = [];
addEventListener("DOMContentLoaded", () => {
  const banner = document.getElementById("banner");
  if (!banner) return;
  const seen = () => window.__banners.push([banner.textContent, Date.now()]);
  seen();
  new MutationObserver(seen).observe(banner, {childList: true, characterData: true, subtree: true});
});
"""
IS_LIVE = "document.documentElement.dataset.live === 'true'"
NOTICE = "frontfleet-live"  # the id of the client's built-in "a new version is live" notice


@dataclass
class OpenPage:
    """One tab of the example page: the host it loaded from, its name in messages and screenshots, its errors."""

    name: str
    host: str
    page: Page
    errors: list[str] = field(default_factory=list)

    def text(self, selector: str) -> str:
        return str(self.page.inner_text(selector))

    def banners(self) -> list[tuple[str, int]]:
        """What the banner showed, in order, each with the time it started showing (ms since the epoch)."""
        history: list[tuple[str, int]] = []
        for text, at in self.page.evaluate("window.__banners"):
            if not history or history[-1][0] != text:
                history.append((text, at))
        return history

    def shown_at(self, text: str) -> int | None:
        return next((at for shown, at in self.banners() if shown == text), None)


@dataclass
class LivePages:
    pages: list[OpenPage]
    hosts: list[str]  # the two hosts with one page each, then the host with TABS tabs

    @property
    def tabs_host(self) -> str:
        return self.hosts[-1]

    def on(self, host: str) -> list[OpenPage]:
        return [page for page in self.pages if page.host == host]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, launched once for the module. A missing browser or Playwright fails with the fix."""
    if not CHROMIUM.exists():
        pytest.fail(f"no browser at {CHROMIUM}; install it with: apt-get install -y chromium "
                    "(or run `make test`, which does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing; install the test extra: .venv/bin/pip install -e '.[test]' "
                    "(no `playwright install`: the tests drive Debian's chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def open_page(context: BrowserContext, deployed: Deployment, host: str, name: str) -> OpenPage:
    opened = OpenPage(name, host, context.new_page())
    opened.page.on("pageerror", lambda error: opened.errors.append(str(error)))
    opened.page.goto(f"http://{deployed.address(host)}/")
    return opened


@pytest.fixture(scope="module")
def live_pages(deployed: Deployment, browser: Browser) -> Iterator[LivePages]:
    """The example build on every host; its page open in one browser context on two hosts, and in TABS tabs of a
    third host in another context (one browser profile: its tabs share one stream through the SharedWorker)."""
    rollout(deployed, EXAMPLE_BUILD)
    hosts = deployed.web_hosts
    assert len(hosts) >= 3, hosts
    hosts = [hosts[0], hosts[1], hosts[2]]
    contexts = [browser.new_context(), browser.new_context()]
    try:
        for context in contexts:
            context.add_init_script(RECORD_BANNER)
        pages = [open_page(contexts[0], deployed, host, host) for host in hosts[:2]]
        pages += [open_page(contexts[1], deployed, hosts[2], f"{hosts[2]}-tab{n}") for n in range(1, TABS + 1)]
        yield LivePages(pages, hosts)
    finally:
        for context in contexts:
            context.close()


@pytest.fixture
def screenshots(live_pages: LivePages, request: pytest.FixtureRequest) -> Iterator[None]:
    """After the test, passed or not: a screenshot of every page, as the user sees it."""
    yield
    folder = ARTIFACTS / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for opened in live_pages.pages:
        opened.page.screenshot(path=str(folder / f"{opened.name}.png"), full_page=True)
    print(f"screenshots of {len(live_pages.pages)} pages in {folder}")


def wait_pages(pages: list[OpenPage], shows: Callable[[OpenPage], bool], what: str, timeout: float = 10) -> None:
    wait_until(lambda: all(shows(page) for page in pages), timeout=timeout, interval=0.05,
               what=f"every page to show {what}: {[page.name for page in pages if not shows(page)]} do not")


def set_banner(deployed: Deployment, text: str) -> float:
    """`fab data-set banner {"text": text}`; the time it returned (seconds since the epoch)."""
    fab_json(deployed, "data-set", "banner", json.dumps({"text": text}))
    return time.time()


def open_streams(deployed: Deployment, host: str) -> int:
    """Streams host's agent holds on its socket, its fan-out process included. The fleet's hosts share the
    controller's network namespace, so `ss` lists every host's socket under the same path: the pids of the agent
    and of its children pick out this host's."""
    pid = agent_pid(deployed, host)
    children = deployed.ssh(host, f"cat /proc/{pid}/task/{pid}/children").split()
    out = deployed.ssh(host, "ss -xHp state established")
    return sum(1 for line in out.splitlines()
               if LIVE_SOCKET in line and any(f"pid={p}," in line for p in (pid, *children)))


def no_page_errors(live: LivePages) -> None:
    assert {page.name: page.errors for page in live.pages if page.errors} == {}


def release_of(deployed: Deployment, host: str) -> dict[str, Any]:
    env = deployed.env_js(host)
    return {"id": env["release"], "label": env["label"]}


def test_the_example_page_is_live_on_two_hosts_and_in_eight_tabs_over_one_stream_per_browser(
        deployed: Deployment, live_pages: LivePages, screenshots: None) -> None:
    """Every page, the seventh and eighth tab included, gets the stream (a tab past the browser's 6 connections
    per origin would hang with a stream of its own); the host of the eight tabs holds one stream for them all."""
    wait_pages(live_pages.pages, lambda page: bool(page.page.evaluate(IS_LIVE)), "that its stream is open")
    for page in live_pages.pages:
        release = release_of(deployed, page.host)
        assert page.text("#release") == release["id"], page.name
        assert page.text("#live") == f"{release['label']} ({release['id']})", page.name
    streams = {host: open_streams(deployed, host) for host in live_pages.hosts}
    assert streams == dict.fromkeys(live_pages.hosts, 1), f"open streams per host for {len(live_pages.pages)} pages"
    no_page_errors(live_pages)


def test_a_banner_set_with_fab_shows_on_every_page_within_a_second(
        deployed: Deployment, live_pages: LivePages, screenshots: None) -> None:
    text = f"Hello from Redis ({uuid.uuid4().hex[:8]})"
    wait_pages(live_pages.pages, lambda page: bool(page.page.evaluate(IS_LIVE)), "that its stream is open")
    returned = set_banner(deployed, text)
    wait_pages(live_pages.pages, lambda page: page.shown_at(text) is not None, repr(text))
    late = {page.name: (page.shown_at(text) or 0) / 1000 - returned for page in live_pages.pages}
    assert max(late.values()) <= 1.0, f"seconds from `fab data-set` returning to each page showing it: {late}"
    for page in live_pages.pages:
        assert page.text("#banner") == text and json.loads(page.text("#data"))["banner"] == {"text": text}
    no_page_errors(live_pages)


def test_the_pages_of_a_killed_agent_keep_their_data_and_catch_up_after_systemd_restarts_it(
        deployed: Deployment, live_pages: LivePages, screenshots: None) -> None:
    """SIGKILL to the agent of the eight tabs' host: their stream ends, they keep showing what they had, and once
    systemd restarted the agent (2 s later) they resume from their last id and show the change made meanwhile."""
    host, before = live_pages.tabs_host, f"before the kill ({uuid.uuid4().hex[:8]})"
    after = f"set while {host}'s agent was down ({uuid.uuid4().hex[:8]})"
    tabs, others = live_pages.on(host), [page for page in live_pages.pages if page.host != host]
    set_banner(deployed, before)
    wait_pages(live_pages.pages, lambda page: page.text("#banner") == before, repr(before))
    killed = agent_pid(deployed, host)

    deployed.ssh(host, "systemctl kill --signal=SIGKILL sync-agent")
    killed_at = time.monotonic()
    set_banner(deployed, after)
    changed = time.monotonic()
    wait_pages(others, lambda page: page.shown_at(after) is not None, f"{after!r} (their agents run)")

    wait_pages(tabs, lambda page: page.shown_at(after) is not None, f"{after!r} after the restart", timeout=20)
    assert agent_pid(deployed, host) not in (0, killed), "systemd restarted the agent"
    # CLOCK_MONOTONIC is the machine's, shared by the fleet's hosts: when the agent started, on the controller's clock.
    started = int(deployed.ssh(host, "systemctl show --property=ExecMainStartTimestampMonotonic --value sync-agent"))
    assert started / 1e6 > changed, (f"the agent started again {started / 1e6 - killed_at:.2f} s after the kill, "
                                     f"before `fab data-set` returned ({changed - killed_at:.2f} s): no resume tested")
    started_at = time.time() - (time.monotonic() - started / 1e6)
    for tab in tabs:
        since_kill = [shown for shown, at in tab.banners() if at >= (tab.shown_at(before) or 0)]
        assert since_kill == [before, after], f"{tab.name} showed {since_kill}: never blank, never another value"
        assert (tab.shown_at(after) or 0) / 1000 >= started_at, f"{tab.name} showed the change before its agent ran"
        assert json.loads(tab.text("#data"))["banner"] == {"text": after}
    assert open_streams(deployed, host) == 1, "the eight tabs came back over one stream"
    no_page_errors(live_pages)


def test_a_rollout_shows_every_page_the_new_version_notice(
        deployed: Deployment, live_pages: LivePages, screenshots: None, tmp_path: Path) -> None:
    """`fab rollout` of a new build: every open page says a new version is live and offers a reload; a page
    reloaded from the notice shows the new release and no notice."""
    label = f"live-{uuid.uuid4().hex[:6]}"
    build = example_build_with(tmp_path / "v2", {"index.html": f"<!-- {label} -->\n"})
    loaded = {page.name: page.text("#release") for page in live_pages.pages}
    fab_json(deployed, "rollout", "--build", str(build), "--label", label, "--timeout", "20")
    new = release_of(deployed, live_pages.hosts[0])
    assert new["label"] == label

    wait_pages(live_pages.pages, lambda page: page.page.locator(f"#{NOTICE}").count() == 1, "the new-version notice",
               timeout=5)
    for page in live_pages.pages:
        notice = page.text(f"#{NOTICE}")
        assert notice.startswith(f"A new version ({label}) is live — reload to get it."), (page.name, notice)
        assert page.text("#release") == loaded[page.name], "the page itself is still the release it loaded"
        assert page.text("#live") == f"{label} ({new['id']})", page.name

    reloaded = live_pages.on(live_pages.tabs_host)[-1]
    with reloaded.page.expect_navigation():
        reloaded.page.get_by_role("button", name="Reload").click()
    reloaded.page.wait_for_function(IS_LIVE)
    assert reloaded.text("#release") == new["id"] and reloaded.page.locator(f"#{NOTICE}").count() == 0
    no_page_errors(live_pages)
