"""The efficiency sweep's report section, from synthetic sweeps that follow known power laws."""
from __future__ import annotations

import json
import re
import zlib

import numpy as np
import pandas as pd
import pytest

from attnbench.harness.report.bench import bench_section
from attnbench.harness.report.bench_cases import fit_exponents
from attnbench.harness.report.bench_figures import figure_scaling
from attnbench.harness.report.bench_tables import crossover_table, flops_table, relative_tables
from attnbench.harness.report.render import render_report
from attnbench.harness.report.writer import Document

NS = [256, 512, 1024, 2048, 4096, 8192]
# impl -> (variant, backend, (time a, time b), (memory a, memory b)): time a·n^b seconds, memory a·n^b MiB
LAWS = {
    "full": ("full", "default", (1e-9, 2.0), (2e-5, 2.0)),
    "full [math]": ("full", "math", (1.5e-9, 2.0), (3e-5, 2.0)),
    # time crosses full at n = 2896 (first faster at 4096); memory at n = 1500 (first smaller at 2048)
    "window": ("window", "default", (2.896e-6, 1.0), (0.03, 1.0)),
    # time crosses full at n = (a_lsh / a_full)^2 = 20000, beyond the measured n
    "lsh": ("lsh", "default", (1e-9 * 20000 ** 0.5, 1.5), (0.05, 1.0)),
}
LSH_TIME_CROSSOVER = 20000.0
# the same laws in every scope and mode, scaled as a whole (ratios between impls unchanged)
SCALE = {("layer", "forward"): 1.0, ("layer", "forward_backward"): 2.5,
         ("block", "forward"): 1.5, ("block", "forward_backward"): 4.0}
NOT_OK = {("full", "block", "forward_backward", 8192): "oom", ("lsh", "layer", "forward", 8192): "timeout"}


def _noise(*key) -> float:
    """Deterministic multiplicative noise within ±1%."""
    return 1.0 + 0.01 * np.sin(zlib.crc32(json.dumps(key).encode()))


def make_bench_df(dtypes=("float32",), batches=(4,)) -> pd.DataFrame:
    """A tidy sweep with every column of results/bench.csv."""
    rows = []
    for dtype in dtypes:
        for batch in batches:
            for (scope, mode), scale in SCALE.items():
                for impl, (variant, backend, (ta, tb), (ma, mb)) in LAWS.items():
                    for n in NS:
                        status = NOT_OK.get((impl, scope, mode, n), "ok")
                        ok = status == "ok"
                        median = scale * ta * n ** tb * _noise(impl, scope, mode, n, "t") if ok else np.nan
                        peak = scale * ma * n ** mb * _noise(impl, scope, mode, n, "m") if ok else np.nan
                        rows.append({
                            "impl": impl, "variant": variant, "backend": backend, "scope": scope, "mode": mode,
                            "dtype": dtype, "batch": batch, "n": n, "status": status,
                            "message": "" if ok else f"{status} at n={n}",
                            "median_s": median, "min_s": median * 0.98, "max_s": median * 1.03,
                            "iqr_s": median * 0.01, "rounds": 10,
                            "tokens_per_s": batch * n / median if ok else np.nan,
                            "peak_mb": peak, "reserved_mb": np.nan, "peak_method": "tracemalloc (CPU)",
                            "flops_analytic": 4.0 * batch * n * n * 64,
                            "flops_counted": 4.0 * batch * n * n * 64 * 1.01 if impl == "full" else np.nan,
                            "gflops_per_s": 4.0 * batch * n * n * 64 / median / 1e9 if ok else np.nan,
                            "sdpa_kernels": {"default": "flash", "math": "math"}[backend]
                            if variant == "full" else "none",
                            "device": "cpu", "device_name": "Test CPU", "threads": 4, "torch": "2.13.0",
                            "params": json.dumps({}), "source": f"results/bench/{impl}.json",
                        })
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def bench() -> pd.DataFrame:
    return make_bench_df()


@pytest.fixture(scope="module")
def bench_csv(tmp_path_factory, bench):
    path = tmp_path_factory.mktemp("bench") / "bench.csv"
    bench.to_csv(path, index=False)
    return path


def _row(table: pd.DataFrame, impl: str) -> pd.Series:
    return table.set_index("impl").loc[impl]


def _ratio_text(r: float) -> str:
    """Ratios in the tables: 2 decimals, 2 significant digits below 0.1."""
    return f"{r:.2f}" if r >= 0.1 else f"{r:.2g}"


def _case(df, impl, scope, mode, n, metric):
    sel = (df["impl"] == impl) & (df["scope"] == scope) & (df["mode"] == mode) & (df["n"] == n)
    return df.loc[sel, metric].item()


def test_fit_exponents_recover_the_power_laws(bench):
    fits = fit_exponents(bench)
    assert len(fits) == len(LAWS) * len(SCALE)
    for r in fits.itertuples():
        _, _, (_, time_b), (_, memory_b) = LAWS[r.impl]
        assert r.time_exponent == pytest.approx(time_b, abs=0.05), r
        assert r.memory_exponent == pytest.approx(memory_b, abs=0.05), r
        expected_points = len(NS) - sum(k[:3] == (r.impl, r.scope, r.mode) for k in NOT_OK)
        assert (r.points, r.n_min) == (expected_points, 256)
        assert r.n_max == (4096 if expected_points < len(NS) else 8192)


def test_fit_exponents_nan_below_three_points(bench):
    few = bench[(bench["impl"] == "window") & bench["n"].isin([256, 512])]
    fits = fit_exponents(few)
    assert (fits["points"] == 2).all()
    assert fits["time_exponent"].isna().all() and fits["memory_exponent"].isna().all()


def test_relative_tables_ratios_and_statuses(bench):
    speed, memory = relative_tables(bench, "block", "forward_backward", "float32", 4)
    assert list(speed["impl"]) == ["full", "full [math]", "lsh", "window"]
    assert list(speed.columns) == ["impl", *map(str, NS)]
    args = ("block", "forward_backward")
    # baseline: absolute values; at 1024 full takes 4·1e-9·1024² s ≈ 4.2 ms and 4·2e-5·1024² MiB ≈ 84 MiB
    assert _row(speed, "full")["1024"] == f"{_case(bench, 'full', *args, 1024, 'median_s') * 1e3:.2f} ms"
    assert _row(memory, "full")["1024"] == f"{_case(bench, 'full', *args, 1024, 'peak_mb'):.1f} MiB"
    assert _row(speed, "full")["8192"] == "OOM" and _row(memory, "full")["8192"] == "OOM"
    for impl in ("full [math]", "lsh", "window"):
        for n in NS[:-1]:
            t = _case(bench, "full", *args, n, "median_s") / _case(bench, impl, *args, n, "median_s")
            m = _case(bench, impl, *args, n, "peak_mb") / _case(bench, "full", *args, n, "peak_mb")
            assert _row(speed, impl)[str(n)] == f"{_ratio_text(t)}×"
            assert _row(memory, impl)[str(n)] == _ratio_text(m)
    # the laws: full [math] is 1.5× slower, window 4096/2896 = 1.41× faster at 4096
    assert _row(speed, "full [math]")["512"] in ("0.66×", "0.67×", "0.68×")
    assert float(_row(speed, "window")["4096"].rstrip("×")) == pytest.approx(4096 / 2896, rel=0.03)
    # where full ran out of memory: the impl's absolute value, marked
    window_8192 = _case(bench, "window", *args, 8192, "median_s")
    assert _row(speed, "window")["8192"] == f"{window_8192 * 1e3:.1f} ms (full OOM)"
    assert _row(memory, "window")["8192"].endswith(" MiB (full OOM)")


def test_relative_tables_timeout_and_missing(bench):
    speed, memory = relative_tables(bench, "layer", "forward", "float32", 4)
    assert _row(speed, "lsh")["8192"] == "TIMEOUT" and _row(memory, "lsh")["8192"] == "TIMEOUT"
    partial = bench.drop(bench[(bench["impl"] == "window") & (bench["n"] == 512)].index)
    speed, _ = relative_tables(partial, "layer", "forward", "float32", 4)
    assert _row(speed, "window")["512"] == "" and _row(speed, "window")["1024"].endswith("×")


def _extrapolated(cell: str) -> float:
    m = re.fullmatch(r"≈ ([\d.]+)([KM]?) \(extrapolated\)", cell)
    assert m, cell
    return float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6}[m.group(2)]


def _fitted_crossover(df, impl, scope, mode) -> float:
    """Where the least-squares power laws of impl's and full's ok times cross: a_i·n^b_i = a_f·n^b_f."""
    fits = {}
    for who in (impl, "full"):
        ok = df[(df["impl"] == who) & (df["scope"] == scope) & (df["mode"] == mode) & (df["status"] == "ok")]
        fits[who] = np.polyfit(np.log(ok["n"]), np.log(ok["median_s"]), 1)
    (b_i, log_a_i), (b_f, log_a_f) = fits[impl], fits["full"]
    return float(np.exp((log_a_i - log_a_f) / (b_f - b_i)))


def test_crossover_within_range_and_extrapolated(bench):
    table = crossover_table(bench, "layer", "forward_backward", "float32", 4).set_index("impl")
    assert list(table.index) == ["full [math]", "lsh", "window"]
    window, lsh, math = table.loc["window"], table.loc["lsh"], table.loc["full [math]"]
    assert (window["faster than full from n"], window["less memory than full from n"]) == ("4096", "2048")
    assert window["time crossover (fit)"] == window["memory crossover (fit)"] == "–"
    # lsh: n^1.5 against n^2 crosses at 20000, beyond the measured 8192
    assert lsh["faster than full from n"] == "none up to 8192"
    crossover = _extrapolated(lsh["time crossover (fit)"])
    assert crossover == pytest.approx(_fitted_crossover(bench, "lsh", "layer", "forward_backward"), rel=0.03)
    assert crossover == pytest.approx(LSH_TIME_CROSSOVER, rel=0.08)  # the fit of noisy points, 2.4× past them
    assert lsh["less memory than full from n"] == "4096"  # 0.05·n against 2e-5·n² crosses at 2500
    # the same exponent as full: never cheaper, and no extrapolation
    assert math["faster than full from n"] == "none up to 8192" and math["time crossover (fit)"] == "–"


def test_crossover_counts_full_oom_as_cheaper(bench):
    table = crossover_table(bench, "block", "forward_backward", "float32", 4).set_index("impl")
    # lsh is slower than full up to 4096, but full ran out of memory at 8192 where lsh ran
    assert table.loc["lsh", "faster than full from n"] == "8192"
    assert table.loc["lsh", "time crossover (fit)"] == "–"
    # full [math] also ran at 8192: cheaper than an OOM from there on
    assert table.loc["full [math]", "faster than full from n"] == "8192"


@pytest.mark.slow
def test_figures_written(bench, tmp_path):
    block = bench[bench["scope"] == "block"]  # one row of panels (the full grid: the report tests)
    for metric in ("median_s", "peak_mb"):
        path = figure_scaling(block, tmp_path / f"{metric}.png", metric, "float32", 4)
        assert path == tmp_path / f"{metric}.png" and path.stat().st_size > 10_000
    assert figure_scaling(bench, tmp_path / "none.png", "median_s", "bfloat16", 4) is None
    assert not (tmp_path / "none.png").exists()
    with pytest.raises(ValueError, match="metric"):
        figure_scaling(bench, tmp_path / "x.png", "tokens_per_s", "float32", 4)


@pytest.mark.slow
def test_bench_section_other_dtypes_and_batches(tmp_path):
    df = make_bench_df(dtypes=("bfloat16", "float32"), batches=(8, 2))
    df = df[(df["scope"] == "block") & (df["mode"] == "forward_backward")  # single-panel figures: quick
            & ~((df["dtype"] == "bfloat16") & (df["batch"] == 2))]  # 3 combinations
    doc = Document(tmp_path)
    bench_section(doc, df)
    md, page = "\n".join(doc.md), "".join(doc.html)
    assert md.startswith("## Efficiency sweep")
    assert "Primary setting: float32, batch 2." in md
    assert "### block, forward_backward (float32, batch 2)" in md
    assert "#### block, forward_backward (bfloat16, batch 8)" in md
    assert "#### block, forward_backward (float32, batch 8)" in md
    assert "bfloat16, batch 2" not in md
    assert "Crossover with full (block, forward_backward, float32, batch 2)" in md  # no layer scope here
    names = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert names == sorted(f"bench_{m}_{d}_b{b}.png" for m in ("time", "memory")
                           for d, b in (("bfloat16", 8), ("float32", 2), ("float32", 8)))
    assert page.count("data:image/png;base64,") == 6 and "<details>" in page


@pytest.mark.slow
def test_render_report_bench_only(bench_csv, bench, tmp_path):
    index = render_report(None, tmp_path, bench_csv)
    assert index == tmp_path / "index.html"
    page, md = index.read_text(), (tmp_path / "summary.md").read_text()
    assert "<title>attnbench efficiency report</title>" in page and md.startswith("# attnbench efficiency report")
    assert page.count("data:image/png;base64,") == 2 and "http://" not in page
    assert (tmp_path / "figures" / "bench_time.png").stat().st_size > 0
    assert (tmp_path / "figures" / "bench_memory.png").stat().st_size > 0
    assert "![time per step (s) vs n (float32, batch 4)](figures/bench_time.png)" in md
    assert "Test CPU (cpu), 4 threads, torch 2.13.0" in md
    assert "median of 10 timed steps" in md and "tracemalloc (CPU)" in md
    assert "### FLOPs (layer, forward_backward, float32, batch 4)" in md  # the counter cross-check
    # one speed and one memory table per scope and mode, and the exponents
    assert md.count("| impl | 256 | 512 | 1024 | 2048 | 4096 | 8192 |") == 2 * len(SCALE)
    fit = fit_exponents(bench).set_index(["impl", "scope", "mode"]).loc[("window", "layer", "forward")]
    assert (f"| window | layer | forward | float32 | 4 | 6 | 256 | 8192 | {fit.time_exponent:.2f} | "
            f"{fit.memory_exponent:.2f} |") in md
    assert re.search(r"\| lsh \| none up to 8192 \| 4096 \| ≈ \d+K \(extrapolated\) \| – \|", md)
    assert "OOM" in md and "TIMEOUT" in md and "(full OOM)" in md
    assert str(bench_csv) in md
    assert "<details><summary>All 96 cases" in page
    assert "## Environment" in md and "| cpu | Test CPU | 4 | 2.13.0 |" in md


def test_render_report_needs_data(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="nothing to report"):
        render_report(None, tmp_path / "out", empty)
    with pytest.raises(ValueError, match="no summary_csv given; no bench_csv given"):
        render_report(None, tmp_path / "out")


@pytest.mark.slow
def test_render_report_runs_and_bench(tmp_path, bench, tiny_listops_data):
    """A real summary of a tiny training run, with the sweep placed after the training cost."""
    from attnbench.harness.results.aggregate import aggregate
    from attnbench.harness.run.train import train_run
    from conftest import tiny_run, torch_state_restored

    with torch_state_restored():
        train_run(tiny_run(), tiny_listops_data, tmp_path / "runs" / "listops" / "full" / "seed0", bar=False)
    summary = tmp_path / "summary.csv"
    aggregate(tmp_path / "runs", summary)
    bench_csv = tmp_path / "bench.csv"  # one scope and mode: single-panel figures, quick
    bench[(bench["scope"] == "layer") & (bench["mode"] == "forward_backward")].to_csv(bench_csv, index=False)
    out = tmp_path / "report"
    render_report(summary, out)  # the sweep is optional: the runs-only report as before
    assert "Efficiency sweep" not in (out / "summary.md").read_text()

    index = render_report(summary, out, bench_csv)
    md, page = (out / "summary.md").read_text(), index.read_text()
    assert md.startswith("# attnbench report") and "<title>attnbench report</title>" in page
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    cost = headings.index("## Training cost (median over seeds)")
    # then the sweep; the published LRA numbers (this ListOps is not LRA's) only after it, apart from the runs' rows
    assert headings[cost + 1:] == ["## Efficiency sweep", "## Published reference: LRA Table 1", "## Runs",
                                   "## About this run"]
    assert headings[:2] == ["## Summary", "## Test accuracy (%)"]
    assert page.index("<h2 id='training-cost") < page.index("<h2 id='efficiency-sweep'") < page.index("<h2 id='runs'")
    assert {p.name for p in (out / "figures").iterdir()} >= {
        "accuracy_vs_throughput.png", "bench_time.png", "bench_memory.png"}


def test_flops_table_gives_rate_at_the_largest_n_and_the_counter_share(bench):
    table = flops_table(bench, "layer", "forward", "float32", 4).set_index("impl")
    assert list(table.index) == ["full", "full [math]", "lsh", "window"]
    full = table.loc["full"]
    assert full["SDPA kernels"] == "flash" and full["n"] == 8192 and full["counted / analytic"] == "1.01–1.01"
    flops = 4.0 * 4 * 8192 ** 2 * 64
    median = 1e-9 * 8192 ** 2.0 * _noise("full", "layer", "forward", 8192, "t")
    assert float(full["GFLOP per step"]) == pytest.approx(flops / 1e9, rel=1e-3)
    assert float(full["GFLOP/s"]) == pytest.approx(flops / median / 1e9, rel=1e-2)
    assert table.loc["window", "counted / analytic"] == "–"  # nothing counted
    assert table.loc["lsh", "n"] == 4096  # its 8192 case timed out


def test_a_one_panel_scaling_figures_title_fits_inside_the_figure(bench, tmp_path, monkeypatch):
    import attnbench.harness.report.writer as writer

    drawn = []
    monkeypatch.setattr(writer.plt, "close", drawn.append)  # the figure as saved (its title wrapped), kept open
    one_panel = bench[(bench["scope"] == "layer") & (bench["mode"] == "forward_backward")]
    figure_scaling(one_panel, tmp_path / "time.png", "median_s", "float32", 4)
    [fig] = drawn
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    width = fig.get_figwidth() * fig.dpi
    monkeypatch.undo()
    writer.plt.close(fig)
    assert 0 <= title.x0 and title.x1 <= width, (title.x0, title.x1, width)  # was cut at both edges
