"""The Markdown table of an ``attnbench compare`` report: one row per case and device, one per skip, and a
line naming where each variant from outside this repository came from."""
from __future__ import annotations

import json

from attnbench.harness.compare.record import CompareReport
from attnbench.harness.compare.results import SideResult
from attnbench.harness.measure.memory import MIB
from attnbench.harness.results.provenance import describe_origin


def _fmt_time(r: SideResult | None) -> str:
    if r is None or not r.ok:
        return "-"
    return f"{r.median_s:.3f} ({r.min_s:.3f}-{r.max_s:.3f})"


def _fmt_mem(r: SideResult | None) -> str:
    """The first step's peak / the peak over all steps, MiB."""
    if r is None or not r.ok or r.peak_bytes is None:
        return "-"
    every = r.peak_all_bytes
    return f"{r.peak_bytes / MIB:.1f} / " + ("-" if every is None else f"{every / MIB:.1f}")


def _fmt_share(r: SideResult | None) -> str:
    share = r.peak_share if r is not None else None
    return "-" if share is None else f"{100 * share:.0f}%"


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown_table(report: CompareReport) -> str:
    s, threads = report.settings, report.threads
    lines = [f"fwd+bwd, float32, B={s.batch}, H={s.heads}, head dim {s.head_dim} (D={s.heads * s.head_dim}), "
             f"{threads} threads, median of {s.repeats} timed steps after {s.warmup} warm-up (min-max)"
             + (f", pooled over {s.rounds} rounds of fresh processes" if s.rounds > 1 else "") + "; "
             "memory = peak above the memory before the first step, fresh process (MiB): of the first fwd+bwd "
             "step / over three steps; on a CPU measured in a run of its own with glibc's mmap threshold fixed, "
             "so freed memory is returned and the peak is that of live memory (repeatable to ~0.1 MiB; under the "
             "default allocator the same peaks vary 10-20% between processes: in the JSON); "
             "% of matmul peak = the step's FLOPs (3x our layer's analytic forward FLOPs, both sides) per second "
             "over the machine's measured float32 matmul rate"
             + "".join(f" ({dev}: {p['gflops']:.1f} GFLOP/s)" for dev, p in report.matmul_peak.items()
                       if p.get("gflops")), "",
             "| variant | ours (settings) | peer | N | device | ours s | peer s | speed-up peer/ours "
             "| ours MiB 1st / all | peer MiB 1st / all | mem ours/peer 1st / all | % of matmul peak ours / peer "
             "| result |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in report.cases:
        case, peer = c.case, c.peer_result
        if case.peer:
            label = (peer.label if peer is not None else None) or case.peer_title or case.peer
        else:
            label = "(no peer)"
        if c.status != "ok":
            result = c.status.replace("|", "/").replace("\n", " ")[:200]
        elif not case.peer:
            result = "ok"
        else:
            result = "goal met" if c.goal_met else "slower or more memory"
        settings = ", ".join(f"{k}={json.dumps(v)}" for k, v in case.ours_params.items()) or "defaults"
        lines.append(f"| {case.variant} | {settings} | {label} | {case.n} | {c.device} | {_fmt_time(c.ours)} "
                     f"| {_fmt_time(peer)} | {_fmt_ratio(c.speedup)} | {_fmt_mem(c.ours)} | {_fmt_mem(peer)} "
                     f"| {_fmt_ratio(c.memory_ratio)} / {_fmt_ratio(c.memory_all_ratio)} "
                     f"| {_fmt_share(c.ours)} / {_fmt_share(peer)} | {result} |")
    for sk in report.skipped:
        lines.append(f"| {sk.variant} | - | {sk.title or '-'} | - | - | - | - | - | - | - | - | - "
                     f"| skipped: {sk.reason.replace('|', '/')[:200]} |")
    if report.variant_origins:
        lines += ["", "From outside this repository: " + "; ".join(
            f"{name} = {origin['source']} ({describe_origin(origin)})"
            for name, origin in report.variant_origins.items())]
    return "\n".join(lines)
