"""Drive the page at ``/`` in a real browser: Debian's Chromium through its ChromeDriver (Selenium).

    python -m ops.browser --bundle artifacts/ml-100k/bundles/compressed --user 196 --query "star wars" \
        --out reports/web/ml-100k        # starts its own server (events to a throw-away file)
    python -m ops.browser --url http://127.0.0.1:8000 ...   # or walks a running one

walks the page as a person would (pick a user, search, open similar items, post a click) and saves
a screenshot of each step with what the page showed (``walk.json``). The browser test
(tests/serving/test_browser.py) runs the same walk against a tiny bundle and asserts on it.

The browser runs with the network off: every host name but 127.0.0.1 resolves to nothing, so a
page or /docs that needs a CDN shows it (a failed request is in the console log we return).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loadtest.harness import HarnessError, running_server

log = logging.getLogger(__name__)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = "install Debian's browser: apt-get install -y chromium chromium-driver (.ci/run does)"
# Background networking and component updates are off: this machine's closed network refuses
# Chromium's own calls home, many at a time. The resolver rule is the "network off" switch.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
WAIT_S = 30.0


class BrowserMissing(RuntimeError):
    pass


def browser_available() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator:
    """A headless Chromium session (Selenium WebDriver) with its console log kept."""
    if not browser_available():
        raise BrowserMissing(f"no {CHROMIUM} or {CHROMEDRIVER}: {INSTALL_HINT}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="recsys-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Both paths given, so Selenium Manager has nothing to look up or download.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, condition, what: str, timeout: float = WAIT_S):
    """``condition(driver)`` once truthy; a timeout names what never happened and the page's status lines."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        # A list re-drawn while it is read leaves stale references: read it again at the next poll.
        return WebDriverWait(driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except TimeoutException:
        raise AssertionError(f"the page never showed {what} within {timeout:.0f} s; it says: "
                             f"{status_lines(driver)}; console: {console_errors(driver)}") from None


def status_lines(driver) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    return {node.get_attribute("id"): node.text
            for node in driver.find_elements(By.CSS_SELECTOR, "#status, [id$='-status'], #similar-of")}


def console_errors(driver) -> list[str]:
    """SEVERE console entries since the last call (failed loads, script errors)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def list_items(driver, list_id: str) -> list[dict[str, str]]:
    """The rows of one of the page's item lists: id, title, reasons (if any), and whether marked new."""
    from selenium.webdriver.common.by import By

    rows = []
    for row in driver.find_elements(By.CSS_SELECTOR, f"#{list_id} > li.item"):
        because = row.find_elements(By.CSS_SELECTOR, ".because")
        rows.append({"item": row.get_attribute("data-item"), "title": row.find_element(By.CSS_SELECTOR, ".title").text,
                     "because": because[0].text if because else "", "new": "new" in row.get_attribute("class")})
    return rows


@dataclass
class Walk:
    """What the page showed at each step of `walk_page` (the test asserts on it)."""

    version: str = ""
    recommendations: list[dict] = field(default_factory=list)
    search: list[dict] = field(default_factory=list)
    search_status: str = ""
    similar_of: str = ""
    similar: list[dict] = field(default_factory=list)
    clicked: str = ""
    after_click: list[dict] = field(default_factory=list)
    activity: list[str] = field(default_factory=list)
    card_rows: int = 0
    loadtest_rows: int = 0
    images: dict[str, bool] = field(default_factory=dict)
    console_errors: list[str] = field(default_factory=list)
    body_data: dict[str, str] = field(default_factory=dict)  # <body data-*> at the end: what scripts set
    screenshots: list[str] = field(default_factory=list)


def full_page_screenshot(driver, path: Path) -> None:
    """The whole page, not just the window: the window is stretched to the page's height for the shot."""
    size = driver.get_window_size()
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(size["width"], max(size["height"], int(height) + 120))  # + the window's chrome
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(size["width"], size["height"])


def _rows_changed(driver, list_id: str, before: list[dict]):
    def changed(_driver):
        now = list_items(driver, list_id)
        return now if now and now != before else False
    return changed


def walk_page(driver, url: str, user: str, query: str, shots: Path | None = None) -> Walk:
    """Load ``url``, recommend for ``user``, search ``query``, open the first recommendation's similar
    items, click it, and record what the page showed; screenshots into ``shots`` if given."""
    from selenium.webdriver.common.by import By

    walk = Walk()

    def shot(name: str) -> None:
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            full_page_screenshot(driver, shots / f"{name}.png")
            walk.screenshots.append(str(shots / f"{name}.png"))

    driver.get(url.rstrip("/") + "/")
    wait_for(driver, lambda d: d.execute_script("return document.body.dataset.ready === 'true'"), "the page ready")
    walk.version = driver.find_element(By.ID, "version").text

    entry = driver.find_element(By.ID, "user-input")
    entry.clear()
    entry.send_keys(user)
    driver.find_element(By.ID, "user-go").click()
    walk.recommendations = wait_for(driver, _rows_changed(driver, "recs", []), f"recommendations for user {user}")

    driver.find_element(By.ID, "search-input").send_keys(query)
    driver.find_element(By.ID, "search-go").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "search-status").text, f"an answer to the search {query!r}")
    walk.search = list_items(driver, "search-results")
    walk.search_status = driver.find_element(By.ID, "search-status").text

    first = driver.find_element(By.CSS_SELECTOR, "#recs > li.item")
    first.find_element(By.CSS_SELECTOR, ".similar-btn").click()
    walk.similar = wait_for(driver, _rows_changed(driver, "similar-list", []), "similar items")
    walk.similar_of = driver.find_element(By.ID, "similar-of").text
    shot("page")

    walk.clicked = first.get_attribute("data-item")
    before = list_items(driver, "recs")
    first.find_element(By.CSS_SELECTOR, ".click-btn").click()
    walk.after_click = wait_for(driver, _rows_changed(driver, "recs", before), "recommendations change after a click")
    walk.activity = [node.text for node in driver.find_elements(By.CSS_SELECTOR, "#activity > li")]
    walk.card_rows = len(driver.find_elements(By.CSS_SELECTOR, "#card-table tbody tr"))
    walk.loadtest_rows = len(driver.find_elements(By.CSS_SELECTOR, "#loadtest-table tbody tr"))
    walk.images = {image_id: driver.execute_script(
        "const i = document.getElementById(arguments[0]); return i.complete && i.naturalWidth > 0 && !i.hidden;",
        image_id) for image_id in ("card-img", "search-img", "loadtest-img")}
    shot("after-click")
    walk.console_errors = console_errors(driver)
    walk.body_data = driver.execute_script("return Object.assign({}, document.body.dataset)")
    return walk


def docs_rendered(driver, url: str) -> tuple[str, list[str]]:
    """Open ``/docs`` and wait until Swagger UI has drawn the API's title and operations; returns
    the title and the console errors (a CDN asset that failed to load is one)."""
    from selenium.webdriver.common.by import By

    driver.get(url.rstrip("/") + "/docs")
    title = wait_for(driver, lambda d: [n.text for n in d.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title")
                                        if n.text], "Swagger UI's title on /docs")[0]
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"), "the API's operations on /docs")
    return title, console_errors(driver)


@contextmanager
def server_url(args: argparse.Namespace) -> Iterator[str]:
    """``--url`` as given, or a server started on ``--bundle`` for as long as the block runs."""
    if args.url:
        yield args.url
        return
    with tempfile.TemporaryDirectory(prefix="recsys-walk-") as scratch:
        command = [sys.executable, "-m", "serving", "--bundle", args.bundle, "--host", "127.0.0.1", "--port", "0",
                   "--events-db", str(Path(scratch) / "events.sqlite")]
        with running_server(command, Path(scratch) / "server.log") as (_, url):
            yield url


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000 (the walk posts a click to it)")
    where.add_argument("--bundle", help="a bundles root: start `python -m serving` on it for the walk, with its "
                       "events in a throw-away file (the click never reaches a retrain)")
    parser.add_argument("--user", required=True, help="the user to pick on the page")
    parser.add_argument("--query", required=True, help="what to type into the search box")
    parser.add_argument("--out", required=True, help="directory for the screenshots and walk.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    out = Path(args.out)
    started = time.monotonic()
    try:
        with server_url(args) as url, chromium() as driver:
            walk = walk_page(driver, url, args.user, args.query, shots=out)
            docs_title, docs_errors = docs_rendered(driver, url)
    except (BrowserMissing, AssertionError, HarnessError) as exc:
        log.error("%s", exc)
        return 1
    record = {**asdict(walk), "docs_title": docs_title, "docs_console_errors": docs_errors,
              "bundle": args.bundle, "seconds": round(time.monotonic() - started, 1)}
    (out / "walk.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("screenshots %s; walk in %s", ", ".join(walk.screenshots), out / "walk.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
