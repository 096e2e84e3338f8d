"""Open every page of the built book in headless Chromium and report what a reader would see broken.

Serves a built HTML folder on 127.0.0.1 and loads each page of the table of contents in Debian's
``chromium`` through ``chromedriver`` (selenium). A page fails when:

- it does not load (HTTP status, or the browser reports an error);
- any request leaves 127.0.0.1 (every other host is also made unresolvable, so nothing is sent);
- a request to the local server fails (a missing script, style sheet or image);
- MathJax reports an error, a maths element stays untypeset, or raw TeX (``$$``, ``\\begin``) is
  left in the text outside code;
- an element is wider than the 1280 px viewport (or pushes the page wider), or a display
  equation is wider than its column (cut off);
- an image fails to load;
- an internal link (or its ``#anchor``) is broken.

Command line (what ``.ci/run`` runs after ``make book``, through ``tests/test_book_browser.py``)::

    python tests/book_browser.py _build/html --toc _toc.yml --screenshots _build/screenshots
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import yaml

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
VIEWPORT = (1280, 900)
RAW_TEX = ("$$", "\\begin{", "\\end{")
# Not a fault of the page: Chromium's own favicon probe, and the theme's first-visit message (an empty localStorage)
IGNORED = ("favicon.ico", "Got invalid theme mode")


@dataclass
class PageReport:
    path: str
    problems: list[str] = field(default_factory=list)
    requests: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


def toc_pages(toc: Path) -> list[str]:
    """HTML paths (relative to the build folder) of every file in a Jupyter Book ``_toc.yml``."""
    data = yaml.safe_load(toc.read_text())
    files = [data["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    for part in data.get("parts", []):
        walk(part.get("chapters"))
    walk(data.get("chapters"))
    return [re.sub(r"\.(md|ipynb|rst)$", "", f) + ".html" for f in files]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextmanager
def serve(folder: Path):
    """An HTTP server for ``folder`` on 127.0.0.1 (a free port), in a thread; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def chromium(user_data_dir: Path):
    """Headless Chromium through the system chromedriver, with its network log switched on."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
        f"--user-data-dir={user_data_dir}",
        # nothing but the local server resolves: a request elsewhere is recorded, never sent
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1, "mobile": False},
        )
        yield driver
    finally:
        driver.quit()


# Run in the page: everything that can be read from the DOM once MathJax has finished.
_PAGE_CHECKS = r"""
const done = arguments[arguments.length - 1];
const tex = JSON.parse(arguments[0]);
const viewport = window.innerWidth;
const out = {mathjax: null, merrors: [], untypeset: [], rawtex: [], wide: [], cutmath: [], images: [], links: []};
async function run() {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    try { await MathJax.startup.promise; out.mathjax = MathJax.version || "loaded"; }
    catch (e) { out.merrors.push("MathJax failed: " + e); }
  }
  window.scrollTo(0, document.body.scrollHeight);
  await new Promise(r => setTimeout(r, 200));
  window.scrollTo(0, 0);
  document.querySelectorAll("mjx-merror, [data-mjx-error], .MathJax_Error").forEach(e =>
    out.merrors.push((e.getAttribute("data-mjx-error") || e.textContent || "").slice(0, 160)));
  document.querySelectorAll(".math").forEach(e => {
    if (!e.querySelector("mjx-container") && !e.closest("pre, code"))
      out.untypeset.push(e.textContent.trim().slice(0, 160));
  });
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const p = n.parentElement;
    if (!p || p.closest("pre, code, script, style, textarea, mjx-container, .highlight, noscript")) continue;
    for (const t of tex) if (n.nodeValue.includes(t)) out.rawtex.push(t + " in: " + n.nodeValue.trim().slice(0, 160));
  }
  const scrolls = el => { for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX; if (o === "auto" || o === "scroll") return true; } return false; };
  const describe = el => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
      (el.className && typeof el.className === "string" ? "." + el.className.trim().split(/\s+/).join(".") : "");
  if (document.documentElement.scrollWidth > viewport + 1)
    out.wide.push("the page is " + document.documentElement.scrollWidth + " px wide");
  document.querySelectorAll("body *").forEach(el => {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || getComputedStyle(el).visibility === "hidden") return;
    if ((r.right > viewport + 1 || r.width > viewport + 1) && !scrolls(el) && !el.closest(".bd-sidebar-primary, .bd-sidebar-secondary, .dropdown-menu, mjx-assistive-mml"))
      out.wide.push(describe(el) + " reaches " + Math.round(r.right) + " px");
  });
  document.querySelectorAll('mjx-container[display="true"]').forEach(m => {
    const box = m.closest(".math") || m.parentElement;
    const math = m.querySelector("mjx-math") || m;
    const w = math.getBoundingClientRect().width, avail = box.getBoundingClientRect().width;
    if (w > avail + 1) out.cutmath.push(Math.round(w) + " px in a " + Math.round(avail) + " px column: " +
        (m.getAttribute("aria-label") || (box.textContent || "").slice(0, 80)));
  });
  document.querySelectorAll("img").forEach(img => {
    if (!img.complete || img.naturalWidth === 0) out.images.push(img.getAttribute("src"));
  });
  document.querySelectorAll("a[href]").forEach(a => out.links.push(a.href));
  done(out);
}
run();
"""


def _ignored(text: str) -> bool:
    return any(pattern in text for pattern in IGNORED)


class Crawler:
    def __init__(self, base_url: str, driver, folder: Path):
        self.base, self.driver, self.folder = base_url, driver, folder
        self.host = urlparse(base_url).netloc
        self._ids: dict[str, set[str] | None] = {}

    def _local(self, url: str) -> bool:
        return urlparse(url).netloc == self.host

    def _anchors(self, url: str) -> set[str] | None:
        """ids and names in the local page at ``url`` (None: it does not load)."""
        page = urldefrag(url)[0]
        if page not in self._ids:
            try:
                with urllib.request.urlopen(page, timeout=10) as resp:
                    html = resp.read().decode("utf-8", "replace") if resp.status == 200 else None
            except (urllib.error.URLError, OSError):
                html = None
            self._ids[page] = None if html is None else set(re.findall(r'\b(?:id|name)="([^"]+)"', html))
        return self._ids[page]

    def _network(self) -> tuple[list[str], list[str], int]:
        """(requests that left 127.0.0.1, failed local requests, number of requests) since the last call."""
        outside, failed, n, urls = [], [], 0, {}
        for entry in self.driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                urls[params["requestId"]] = url
                scheme = urlparse(url).scheme
                if scheme in ("data", "blob", "about", "chrome", "javascript"):
                    continue
                n += 1
                if urlparse(url).hostname not in ("127.0.0.1",):
                    outside.append(url)
            elif method == "Network.responseReceived":
                resp = params["response"]
                if resp.get("status", 200) >= 400 and self._local(resp["url"]) and not _ignored(resp["url"]):
                    failed.append(f"{resp['status']} {resp['url']}")
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                url = urls.get(params["requestId"], "?")
                if self._local(url) and not _ignored(url):
                    failed.append(f"{params.get('errorText')} {url}")
        return outside, failed, n

    def check(self, path: str) -> PageReport:
        report, url, start = PageReport(path), urljoin(self.base, path), time.time()
        if self._anchors(url) is None:
            report.problems.append("page does not load (not found or not HTTP 200)")
            return report
        self.driver.get_log("performance")  # drop what earlier pages left
        self.driver.get(url)
        self.driver.set_script_timeout(60)
        out = self.driver.execute_async_script(_PAGE_CHECKS, json.dumps(RAW_TEX))
        outside, failed, report.requests = self._network()
        report.problems += [f"request leaves 127.0.0.1: {u}" for u in sorted(set(outside))]
        report.problems += [f"local request failed: {u}" for u in sorted(set(failed))]
        report.problems += [f"MathJax error: {e}" for e in out["merrors"]]
        report.problems += [f"maths not typeset: {e}" for e in out["untypeset"]]
        report.problems += [f"raw TeX in the text: {e}" for e in out["rawtex"]]
        # a matplotlib figure executed without the inline backend (e.g. MPLBACKEND=Agg) is printed, not drawn
        drawn_as_text = re.findall(r"&lt;Figure size [^&]*&gt;|<Figure size [^<>]*>", self.driver.page_source)
        report.problems += [f"figure printed as text, not drawn: {e}" for e in drawn_as_text]
        report.problems += [f"wider than {VIEWPORT[0]} px: {e}" for e in out["wide"][:10]]
        report.problems += [f"equation cut off: {e}" for e in out["cutmath"]]
        report.problems += [f"image does not load: {e}" for e in out["images"]]
        for link in sorted(set(out["links"])):
            if not self._local(link) or urlparse(link).scheme not in ("http", "https"):
                continue
            page, fragment = urldefrag(link)
            ids = self._anchors(page)
            if ids is None:
                report.problems.append(f"broken link: {link}")
            elif fragment and page.endswith(".html") and fragment not in ids:
                report.problems.append(f"broken anchor: {link}")
        for entry in self.driver.get_log("browser"):
            if entry.get("level") == "SEVERE" and not _ignored(entry.get("message", "")):
                report.problems.append(f"browser error: {entry['message'][:200]}")
        report.seconds = time.time() - start
        return report

    def screenshot(self, path: str, target: Path, full_page: bool = True) -> Path:
        """A PNG of the page at 1280 px width (the whole page, or the first screen)."""
        import base64

        self.driver.get(urljoin(self.base, path))
        self.driver.execute_async_script(
            "const done = arguments[0]; (window.MathJax && MathJax.startup && MathJax.startup.promise"
            " ? MathJax.startup.promise : Promise.resolve()).then(() => setTimeout(done, 300));"
        )
        height = VIEWPORT[1]
        if full_page:  # a viewport as tall as the page (captureBeyondViewport shifts wide pages sideways)
            height = min(int(self.driver.execute_script("return document.documentElement.scrollHeight")), 16000)
        metrics = {"width": VIEWPORT[0], "deviceScaleFactor": 1, "mobile": False}
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": height})
        time.sleep(0.5)
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": VIEWPORT[1]})
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(base64.b64decode(shot["data"]))
        return target


def crawl(folder: Path, pages: list[str], screenshots: dict[str, Path] | None = None) -> list[PageReport]:
    """Check ``pages`` (paths relative to ``folder``) and write the requested screenshots."""
    if shutil.which(CHROMIUM) is None or shutil.which(CHROMEDRIVER) is None:
        raise FileNotFoundError(f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)")
    with tempfile.TemporaryDirectory(prefix="hiermix-chromium-") as profile, serve(folder) as base:
        with chromium(Path(profile)) as driver:
            crawler = Crawler(base, driver, folder)
            reports = [crawler.check(page) for page in pages]
            for page, target in (screenshots or {}).items():
                crawler.screenshot(page, target)
    return reports


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the built book, e.g. _build/html")
    parser.add_argument("--toc", type=Path, default=Path("_toc.yml"))
    parser.add_argument("--pages", nargs="*", help="pages to check instead of the TOC's (paths under html)")
    parser.add_argument("--screenshots", type=Path, help="folder for screenshots of the first and the last page")
    args = parser.parse_args(argv)
    pages = args.pages or toc_pages(args.toc)
    shots = {}
    if args.screenshots:
        shots = {pages[0]: args.screenshots / "landing.png", pages[-1]: args.screenshots / "last.png"}
    reports = crawl(args.html, pages, shots)
    for r in reports:
        print(f"{'ok  ' if r.ok else 'FAIL'} {r.path} ({r.requests} requests, {r.seconds:.1f} s)")
        for p in r.problems:
            print(f"       {p}")
    failed = sum(not r.ok for r in reports)
    print(f"{len(reports) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
