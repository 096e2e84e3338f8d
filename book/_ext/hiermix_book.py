"""Sphinx glue for the hiermix-pyro book (a local extension, loaded through _config.yml).

- Every notebook page built from ``notebooks/X.ipynb`` also offers its MyST twin ``X.md`` in
  the header's download menu, beside the theme's ``.ipynb``: the .md is copied next to the
  .ipynb under ``_sources/``, so the link works offline.
- Script snippets that extensions add twice are written once (no JavaScript error on the page).
- The book's style sheet (``book/_static/hiermix.css``): wide tables and long equations scroll
  inside their own box instead of widening the page.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _config_inited(app, config) -> None:
    config.html_static_path.append(str(HERE.parent / "_static"))


def _md_twin(app, pagename: str) -> Path | None:
    source = Path(app.srcdir) / (pagename + ".ipynb")
    twin = source.with_suffix(".md")
    return twin if source.exists() and twin.exists() else None


def _add_md_download(app, pagename, templatename, context, doctree) -> None:
    if _md_twin(app, pagename) is None:
        return
    for button in context.get("header_buttons", []):
        if button.get("label") == "download-buttons":
            url = f"{context['pathto']('_sources', 1)}/{pagename}.md"
            md = {
                "type": "link",
                "url": url,
                "text": ".md",
                "tooltip": "Download the MyST source (jupytext pairs it with the .ipynb)",
                "icon": "fas fa-file-lines",
                "label": "download-myst-button",
            }
            position = next(
                (i + 1 for i, b in enumerate(button["buttons"]) if b.get("label") == "download-notebook-button"), 0
            )
            button["buttons"].insert(position, md)


def _copy_md_twins(app) -> None:
    for pagename in app.env.found_docs:
        twin = _md_twin(app, pagename)
        if twin is not None:
            target = Path(app.outdir) / "_sources" / (pagename + ".md")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(twin, target)


_INLINE_SCRIPT = re.compile(r"[ \t]*<script>(?P<body>[^<]*)</script>\n?")


def _dedupe_inline_scripts(html: str) -> str:
    """Keep the first of identical inline <script> snippets: sphinx-book-theme writes the thebe and
    togglebutton configuration twice, and a second ``const THEBE_JS_URL`` is a JavaScript error."""
    seen: set[str] = set()

    def keep_first(match: re.Match) -> str:
        body = match.group("body")
        if body in seen:
            return ""
        seen.add(body)
        return match.group(0)

    return _INLINE_SCRIPT.sub(keep_first, html)


def _finish(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    _copy_md_twins(app)
    for page in Path(app.outdir).rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        fixed = _dedupe_inline_scripts(html)
        if fixed != html:
            page.write_text(fixed, encoding="utf-8")


def setup(app):
    app.connect("config-inited", _config_inited)
    app.add_css_file("hiermix.css")
    app.connect("html-page-context", _add_md_download, priority=600)  # after the theme's buttons (501)
    app.connect("build-finished", _finish)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
