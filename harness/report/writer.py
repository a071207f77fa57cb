"""One small writer for the report's two forms: a section is written once, into a ``Document``,
which renders it as Markdown (``summary.md``, figures linked) and as one self-contained HTML
page (``index.html``, figures embedded)."""
from __future__ import annotations

import base64
import html
import io
import re
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display needed
import matplotlib.pyplot as plt
import pandas as pd

from attnbench.harness.core.io import atomic_write_bytes, atomic_write_text
from attnbench.harness.report.layout import finish

CSS = """body{font-family:system-ui,sans-serif;max-width:1280px;margin:1em auto;padding:0 1em;color:#222}
h1{margin:.3em 0} h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table.t{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
table.t th,table.t td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
table.t th{background:#f3f3f3} figure{margin:.5em 0} figcaption{font-size:.85em;color:#555}
img{max-width:100%;cursor:zoom-in} img.zoom{position:fixed;inset:0;margin:auto;max-width:98vw;max-height:98vh;
z-index:9;background:#fff;box-shadow:0 0 0 100vmax rgba(0,0,0,.6);cursor:zoom-out}
nav.toc{background:#f7f7f7;border:1px solid #ddd;padding:.4em 1em;margin:1em 0}
nav.toc ul{margin:.2em 0;padding-left:1.2em;columns:2} ul.findings li{margin:.25em 0}
.summary{display:grid;grid-template-columns:minmax(340px,2fr) 3fr;gap:1.2em;align-items:start}
.summary ul.findings{margin:0;padding-left:1.1em;font-size:.92em}
@media (max-width:900px){.summary{grid-template-columns:1fr}}
.note{color:#555;font-size:.9em} .bad{color:#a00}"""
# click a figure to see it at the window's size, click again (or Escape) to put it back
SCRIPT = """document.addEventListener('click',e=>{const t=e.target;if(t.tagName==='IMG'){t.classList.toggle('zoom');}});
document.addEventListener('keydown',e=>{if(e.key==='Escape'){document.querySelectorAll('img.zoom')
.forEach(i=>i.classList.remove('zoom'));}});"""
TOC_MARK = "\x00toc\x00"
WARNINGS_MARK = "\x00warnings\x00"


def md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join("" if pd.isna(r[c]) else str(r[c]).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>(none)</em></p>"
    return df.to_html(index=False, escape=True, na_rep="", border=0, classes="t")


def _inline_html(text: str) -> str:
    """Escaped text, with Markdown's `code` spans as <code> and **bold** as <strong>."""
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def anchor(text: str) -> str:
    """A heading's id: lower case, runs of other characters as one hyphen."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def suptitle(fig, text: str, fontsize: float = 12) -> None:
    """A figure's title; ``save_figure`` wraps it to the figure's width as drawn (``layout.finish``), so that
    a long one is never cut at the edges."""
    fig.suptitle(text, fontsize=fontsize)


def save_figure(fig, path: Path) -> Path:
    """A matplotlib figure as a PNG at ``path`` (written atomically), laid out first (``layout.finish``:
    titles wrapped to their width, legends beside the panels); the figure is closed."""
    finish(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_table(path: Path | None) -> pd.DataFrame:
    """A CSV as a DataFrame; empty when there is no path or the file holds no rows."""
    if path is None:
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


class Document:
    """A report under construction; figures live under ``out_dir`` (Markdown links them relative to it)."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        (self.out_dir / "figures").mkdir(parents=True, exist_ok=True)  # a declared output, even when empty
        self.md: list[str] = []
        self.html: list[str] = []
        self.sections: list[tuple[int, str, str]] = []  # (level, text, id) of every h2 / h3
        self._toc_from = 0  # the first section the table of contents lists
        self.warnings: list[str] = []  # what the report could not show as it is (``warn``)

    def heading(self, level: int, text: str) -> None:
        ids = {i for _, _, i in self.sections}
        key, k = anchor(text), 2
        while key in ids:
            key, k = f"{anchor(text)}-{k}", k + 1
        if level in (2, 3):
            self.sections.append((level, text, key))
        self.md += [f"{'#' * level} {text}", ""]
        self.html.append(f"<h{level} id='{key}'>{html.escape(text)}</h{level}>")

    def toc(self) -> None:
        """Here, a table of contents of the sections that follow (filled in when written)."""
        self.md.append(TOC_MARK)
        self.html.append(TOC_MARK)
        self._toc_from = len(self.sections)

    def _toc(self, markdown: bool) -> str:
        entries = [(text, key) for lvl, text, key in self.sections[self._toc_from:] if lvl == 2]
        if markdown:
            return "\n".join(f"- [{text}](#{key})" for text, key in entries) + "\n"
        items = "".join(f"<li><a href='#{key}'>{html.escape(text)}</a></li>" for text, key in entries)
        return f"<nav class='toc' aria-label='Contents'><strong>Contents</strong><ul>{items}</ul></nav>"

    def warnings_here(self) -> None:
        """Here, every warning of the report (``warn``), said once more (filled in when written)."""
        self.md.append(WARNINGS_MARK)
        self.html.append(WARNINGS_MARK)

    def warn(self, text: str, here: bool = True) -> None:
        """Something the report could not show as it is (a damaged file, a number that is none): said
        where ``warnings_here`` was called, and (``here``) also here, where it applies."""
        self.warnings.append(text)
        if here:
            self.note(f"Warning: {text}", alert=True)

    def _warnings(self, markdown: bool) -> str:
        if not self.warnings:
            return ""
        head = f"{len(self.warnings)} warning(s): parts of the results could not be used as they are"
        if markdown:
            return f"**{head}:**\n\n" + "\n".join(f"- {w}" for w in self.warnings) + "\n"
        items = "".join(f"<li>{_inline_html(w)}</li>" for w in self.warnings)
        return f"<div class='bad' role='alert'><strong>{head}:</strong><ul>{items}</ul></div>"

    @contextmanager
    def block(self, css_class: str):
        """HTML only: what is written inside sits in one ``<div class=css_class>`` (a layout)."""
        self.html.append(f"<div class='{css_class}'>")
        try:
            yield self
        finally:
            self.html.append("</div>")

    def bullets(self, lines: list[str]) -> None:
        """A list of findings (`code` and **bold** allowed)."""
        if not lines:
            return
        self.md += [f"- {line}" for line in lines] + [""]
        self.html.append("<ul class='findings'>" + "".join(f"<li>{_inline_html(x)}</li>" for x in lines) + "</ul>")

    def note(self, text: str, *, alert: bool = False, html_only: bool = False) -> None:
        """A paragraph (`code` spans allowed); ``alert``: shown as a warning; ``html_only``: the
        Markdown has it elsewhere (a table's caption)."""
        if not html_only:
            self.md += [text, ""]
        self.html.append(f"<p class='{'bad' if alert else 'note'}'>{_inline_html(text)}</p>")

    def table(self, df: pd.DataFrame, caption: str | None = None) -> None:
        if caption:
            self.md += [f"_{caption}_", ""]
            self.html.append(f"<p class='note'><em>{html.escape(caption)}</em></p>")
        self.md.append(md_table(df))
        self.html.append(html_table(df))

    def figure(self, path: Path | None, alt: str, md_alt: str | None = None) -> None:
        """A PNG written beforehand (None: nothing to plot); ``md_alt``: its Markdown alt text, when
        shorter than the HTML caption."""
        if path is None:
            self.md += [f"_{md_alt or alt}: no data to plot_", ""]
            self.html.append(f"<p><em>{html.escape(alt)}: no data to plot</em></p>")
            return
        self.md += [f"![{md_alt or alt}]({Path(path).relative_to(self.out_dir).as_posix()})", ""]
        data = base64.b64encode(Path(path).read_bytes()).decode()
        self.html.append(f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(alt)}</figcaption></figure>")

    def details(self, summary: str, df: pd.DataFrame, md_text: str) -> None:
        """A long table: folded away in HTML, a pointer to its file (``md_text``) in Markdown."""
        self.md += [md_text, ""]
        self.html.append(f"<details><summary>{_inline_html(summary)}</summary>{html_table(df)}</details>")

    def write(self, title: str) -> Path:
        """Write ``summary.md`` and the self-contained ``index.html``; returns the latter."""
        md = ("\n".join(self.md).replace(TOC_MARK, self._toc(markdown=True))
              .replace(WARNINGS_MARK, self._warnings(markdown=True)))
        atomic_write_text(self.out_dir / "summary.md", md)
        body = ("".join(self.html).replace(TOC_MARK, self._toc(markdown=False))
                .replace(WARNINGS_MARK, self._warnings(markdown=False)))
        page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
                f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
                f"<title>{html.escape(title)}</title>"
                f"<style>{CSS}</style></head><body>{body}<script>{SCRIPT}</script></body></html>\n")
        index = self.out_dir / "index.html"
        atomic_write_text(index, page)
        return index
