"""The report read in a real browser: headless Chromium opens a rendered ``index.html`` from a
file URL (offline), and the test checks that every image decoded (naturalWidth > 0) with nothing
cut at its edges (no ink on a figure's outermost pixels: a clipped title would leave some), that
nothing was logged as an error (script errors, failed loads, console.error), that the Summary
and the table of contents are there, and that the first screen (1400 x 900) shows the findings
and the frontier figure. A screenshot is saved under the test's temp folder.

Chromium is Debian's ``chromium`` package: installed here with apt-get when missing; the test
is skipped, with the reason, only when it cannot be installed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_bench_report import make_bench_df
from test_report_summary import three_variants

from attnbench.harness.report.render import render_report

SCREEN = (1400, 900)
# runs first in <head>: records errors (the capture phase also sees failed image loads) and console.error,
# then after load writes what the test needs into <pre id="attnbench-check"> for --dump-dom to print
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => __errors.push(String(e.message || (e.target && e.target.src || '')
  .slice(0, 80) || 'error')), true);
const __ce = console.error; console.error = (...a) => { __errors.push(a.join(' ')); __ce(...a); };
window.addEventListener('load', () => {
  const box = el => { if (!el) return null; const r = el.getBoundingClientRect();
                      return {top: r.top, bottom: r.bottom, width: r.width, height: r.height}; };
  // a figure's ink on its outermost pixels: a title (or anything) cut at the figure's edge leaves some there
  const edgeInk = i => { const c = document.createElement('canvas'); c.width = i.naturalWidth;
    c.height = i.naturalHeight; const g = c.getContext('2d'); g.drawImage(i, 0, 0); let n = 0;
    for (const [x, y, w, h] of [[0, 0, c.width, 1], [0, c.height - 1, c.width, 1], [0, 0, 1, c.height],
                                [c.width - 1, 0, 1, c.height]]) {
      const d = g.getImageData(x, y, w, h).data;
      for (let k = 0; k < d.length; k += 4) n += (d[k] < 200 || d[k + 1] < 200 || d[k + 2] < 200) ? 1 : 0; }
    return n; };
  const imgs = [...document.images].map(i => ({alt: i.alt.slice(0, 40), w: i.naturalWidth, h: i.naturalHeight,
                                              edge_ink: i.naturalWidth ? edgeInk(i) : -1}));
  const summary = document.getElementById('summary');
  const out = {errors: __errors, images: imgs, summary: box(summary),
    findings: box(document.querySelector('.summary ul.findings')),
    frontier: box(document.querySelector('.summary img')),
    nav: box(document.querySelector('nav.toc')),
    nav_links: [...document.querySelectorAll('nav.toc a')].map(a => a.getAttribute('href')),
    anchors_ok: [...document.querySelectorAll('nav.toc a')].every(a => document.getElementById(
      a.getAttribute('href').slice(1)) !== null),
    viewport: [window.innerWidth, window.innerHeight]};
  const pre = document.createElement('pre'); pre.id = 'attnbench-check';
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
});
</script>"""


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    found = _find_chromium()
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("headless Chromium is not installed and there is no apt-get to install it")
    if os.geteuid() != 0:
        pytest.skip("headless Chromium is not installed, and installing Debian's chromium needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # a mirror that does not answer fails fast: the suite must not wait minutes for it
    quick = ["-o", "Acquire::Retries=1", "-o", "Acquire::http::Timeout=20", "-o", "Acquire::https::Timeout=20"]
    install = ["apt-get", *quick, "install", "-y", "-q", "--no-install-recommends", "chromium"]
    try:
        proc = subprocess.run(install, capture_output=True, text=True, timeout=240, env=env)
        if proc.returncode != 0:  # stale package lists: refresh once
            subprocess.run(["apt-get", *quick, "update", "-q"], capture_output=True, timeout=120, env=env)
            proc = subprocess.run(install, capture_output=True, text=True, timeout=240, env=env)
    except subprocess.TimeoutExpired:
        pytest.skip("installing Debian's chromium timed out (no package mirror reachable?)")
    found = _find_chromium()
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"headless Chromium could not be installed with apt-get: {tail[0]}")
    return found


def _chromium(binary: str, profile: Path, size: tuple[int, int], *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _probe(binary: str, profile: Path, size: tuple[int, int], page: Path) -> dict:
    proc = _chromium(binary, profile, size, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    start = proc.stdout.index('<pre id="attnbench-check">') + len('<pre id="attnbench-check">')
    return json.loads(proc.stdout[start:proc.stdout.index("</pre>", start)].replace("&quot;", '"')
                      .replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """A whole report: runs of four variants over three seeds, and an efficiency sweep."""
    tmp = tmp_path_factory.mktemp("browser")
    summary, bench = tmp / "summary.csv", tmp / "bench.csv"
    three_variants().to_csv(summary, index=False)
    make_bench_df().to_csv(bench, index=False)
    return render_report(summary, tmp / "reports", bench)


@pytest.mark.slow
def test_the_report_reads_in_headless_chromium(chromium, rendered, tmp_path):
    page = rendered.read_text(encoding="utf-8")
    probe = rendered.with_name("probe.html")  # beside index.html: the same folder, the same relative links
    probe.write_text(page.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    # a headless window's size includes its frame: size it so that the page itself sees 1400 x 900
    check = _probe(chromium, tmp_path / "profile-dom", SCREEN, probe)
    size = (SCREEN[0] + SCREEN[0] - check["viewport"][0], SCREEN[1] + SCREEN[1] - check["viewport"][1])
    if tuple(check["viewport"]) != SCREEN:
        check = _probe(chromium, tmp_path / "profile-dom", size, probe)
    assert check["errors"] == []
    assert check["viewport"] == list(SCREEN)
    assert len(check["images"]) >= 4 and all(i["w"] > 0 and i["h"] > 0 for i in check["images"]), check["images"]
    # no figure's title (nor anything else) cut at the figure's edge, as the browser decodes the PNGs; that each
    # title lies inside its figure is also measured with matplotlib's renderer (test_report_figures.py)
    assert [i for i in check["images"] if i["edge_ink"] != 0] == []
    assert "#summary" not in check["nav_links"] and len(check["nav_links"]) >= 6 and check["anchors_ok"]
    # the first screen: the Summary's findings and the whole frontier figure
    assert check["summary"]["top"] < 200
    assert check["findings"]["top"] < SCREEN[1] and check["findings"]["height"] > 0
    assert check["frontier"]["height"] > 200 and check["frontier"]["bottom"] <= SCREEN[1], check["frontier"]

    shot = tmp_path / "first_screen.png"
    proc = _chromium(chromium, tmp_path / "profile-shot", size, f"--screenshot={shot}", rendered.as_uri())
    assert proc.returncode == 0 and shot.stat().st_size > 10_000, proc.stderr[-2000:]
