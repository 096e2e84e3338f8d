"""The built book in a real browser: headless Chromium opens every page of the table of contents.

``tests/book_browser.py`` does the work (see its docstring for what fails a page). Two tests:

- the book in ``$HIERMIX_BOOK_HTML`` (``.ci/run`` sets it to ``_build/html`` after ``make book``)
  passes, and screenshots of the landing page, a chapter and the results page are kept in
  ``_build/screenshots``;
- the check is not blind: a one-page fixture site with the old Empirical-Bayes page (display maths
  inside list items) and an over-long equation fails it.

Both need Debian's chromium and chromium-driver and selenium; without them they are skipped,
unless ``HIERMIX_BOOK_HTML`` is set, where a missing browser is an error.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import book_browser  # tests/book_browser.py (pytest puts tests/ on the path: rootdir conftest, no __init__)
import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = os.environ.get("HIERMIX_BOOK_HTML")
SCREENSHOTS = ROOT / "_build" / "screenshots"


def _need_browser():
    missing = [p for p in (book_browser.CHROMIUM, book_browser.CHROMEDRIVER) if shutil.which(p) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    if missing:
        message = f"missing {', '.join(missing)}: apt-get install chromium chromium-driver; pip install selenium"
        if BOOK:
            pytest.fail(message)
        pytest.skip(message)


def _report(reports) -> str:
    return "\n".join(f"{r.path}:\n  " + "\n  ".join(r.problems) for r in reports if not r.ok)


@pytest.mark.skipif(not BOOK, reason="set HIERMIX_BOOK_HTML to a built book (make book; .ci/run does)")
def test_every_page_of_the_built_book_passes_in_chromium():
    _need_browser()
    html = Path(BOOK)
    pages = book_browser.toc_pages(ROOT / "_toc.yml")
    assert pages[0] == "book/intro.html" and "notebooks/benchmark.html" in pages
    shots = {
        "book/intro.html": SCREENSHOTS / "landing.png",
        "notebooks/04_empirical_bayes.html": SCREENSHOTS / "chapter_empirical_bayes.png",
        "notebooks/benchmark.html": SCREENSHOTS / "results.png",
    }
    reports = book_browser.crawl(html, pages, shots)
    assert [r.path for r in reports] == pages
    assert all(r.ok for r in reports), _report(reports)
    for target in shots.values():
        assert target.stat().st_size > 10_000, target


def test_the_old_empirical_bayes_page_fails(tmp_path):
    _need_browser()
    out = tmp_path / "html"
    subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-q", str(ROOT / "tests" / "data" / "book_fixture"), str(out)],
        check=True,
    )
    (report,) = book_browser.crawl(out, ["index.html"])
    problems = "\n".join(report.problems)
    assert not report.ok
    assert "raw TeX in the text: $$" in problems or "MathJax error" in problems, problems
    assert "equation cut off" in problems, problems
    assert "leaves 127.0.0.1" not in problems, problems  # the fixture itself is offline
