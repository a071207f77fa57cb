"""One small writer for the report's two forms: a section is written once, into a ``Document``,
which renders it as Markdown (``summary.md``, figures linked) and as one self-contained HTML
page (``index.html``, figures embedded)."""
from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display needed
import matplotlib.pyplot as plt
import pandas as pd

from attnbench.harness.core.io import atomic_write_bytes, atomic_write_text

CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table.t{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
table.t th,table.t td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
table.t th{background:#f3f3f3} img{max-width:100%} figcaption{font-size:.85em;color:#555}
.note{color:#555;font-size:.9em} .bad{color:#a00}"""


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
    """Escaped text, with Markdown's `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def save_figure(fig, path: Path) -> Path:
    """A matplotlib figure as a PNG at ``path`` (written atomically); the figure is closed."""
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
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, level: int, text: str) -> None:
        self.md += [f"{'#' * level} {text}", ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

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
        atomic_write_text(self.out_dir / "summary.md", "\n".join(self.md))
        page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{CSS}</style></head><body>{''.join(self.html)}</body></html>\n")
        index = self.out_dir / "index.html"
        atomic_write_text(index, page)
        return index
