"""``attnbench compare``: our attention variants against public PyTorch implementations, side by side.

For each variant, every *peer* (the best public implementation of the same mechanism) is built
with the same model dim, heads, head dim, mechanism settings (window, blocks, chunks, buckets,
hashes, features), batch, sequence length N and dtype (float32), and fed the same inputs. Each
implementation is timed as a whole layer, projections included, forward + backward:

    y = layer(x, key_padding_mask); y.backward(grad_out)      # x, grad_out: (B, N, D), seeded

Peers that only implement the attention core get the same input/output projections as ours
(``nn.Linear``), so both sides do the same projection work. Peers are optional
(``pip install .[peers]``); a peer whose package is missing is reported as skipped.

Every implementation and N is measured in a fresh process (``attnbench.harness.compare.probe``: time = median
of the timed steps after warm-up; peak memory = the first step's peak above the memory before
it). The peers are in ``attnbench.harness.compare.peers``. A case that fails (peer error, out of memory,
timeout) is recorded with its error text and the run goes on. Output: a Markdown table on
stdout and a JSON file (machine info and every case). With ``--device cuda`` or ``auto`` it first leases
one GPU of a workstation (``attnbench.harness.measure.gpu_lease``, as ``bench`` and ``train`` do) and
runs on CUDA's current device, the leased one.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from attnbench.harness.compare.peers import PEERS, Shape, _defaults, _version, missing_modules
from attnbench.harness.compare.probe import LIVE_MEMORY_METHOD, run_worker
from attnbench.harness.core.errors import UsageError
from attnbench.harness.measure.gpu_lease import acquire
from attnbench.harness.measure.matmul_peak import probe_in_fresh_process, share_of_peak
from attnbench.harness.results.environment import capture
from attnbench.variants import VARIANTS

#: distributions whose versions go into the JSON machine info
PEER_DISTRIBUTIONS = ("transformers", "local-attention", "reformer-pytorch", "performer-pytorch",
                      "pytorch-fast-transformers", "linformer", "linformer-pytorch", "nystrom-attention",
                      "sinkhorn-transformer", "einops")
#: order of the variants in the output
VARIANT_ORDER = ("window", "sparse", "lsh", "linear", "local", "linformer", "sinkhorn", "nystrom", "synthesizer",
                 "full")
MIB = 2 ** 20


def parse_settings(items: list[str] | None) -> dict[str, dict]:
    """``--set VARIANT.PARAM=VALUE`` items -> {variant: {param: value}}; VALUE is read as YAML
    (``256``, ``0.5``, ``[0]``, ``favor``). Unknown variants and parameters are refused."""
    out: dict[str, dict] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        variant, dot, name = key.partition(".")
        if not sep or not dot or not variant or not name:
            raise UsageError(f"--set {item!r}: expected VARIANT.PARAM=VALUE, e.g. window.window=256")
        if variant not in VARIANTS.names():
            raise UsageError(f"--set {item!r}: unknown variant {variant!r}")
        if name not in _defaults(variant):
            raise UsageError(f"--set {item!r}: {variant} has no parameter {name!r}; "
                             f"it has {', '.join(_defaults(variant))}")
        out.setdefault(variant, {})[name] = yaml.safe_load(raw)
    return out


def plan(variants: list[str], peers: list[str] | None, shape_of: Callable[[int], Shape], ns: list[int],
         no_peers: bool = False, settings: dict[str, dict] | None = None) -> tuple[list[dict], list[dict]]:
    """(cases, skipped): one case per (variant, peer, N); skipped variants and peers with reasons.
    ``settings``: per variant, parameters that replace its defaults before each peer matches them."""
    known = set(VARIANTS.names())
    cases, skipped = [], []
    for variant in variants:
        if variant not in known:
            skipped.append({"variant": variant, "peer": None,
                            "reason": f"variant {variant!r} is not registered (variants/{variant}.py missing?)"})
            continue
        if peers is None:
            vpeers = [p for p in PEERS.values() if p.variant == variant]
        else:  # in the order given
            vpeers = [PEERS[name] for name in peers if name in PEERS and PEERS[name].variant == variant]
        if not vpeers:
            why = "no public peer registered for it"
            if no_peers:
                for n in ns:
                    cases.append({"variant": variant, "peer": None, "n": n, "ours_params": {}, "peer_settings": None})
            else:
                skipped.append({"variant": variant, "peer": None, "reason": why})
            continue
        defaults = {**_defaults(variant), **(settings or {}).get(variant, {})}
        for peer in vpeers:
            if not no_peers:
                missing = missing_modules(peer)
                if missing:
                    skipped.append({"variant": variant, "peer": peer.name, "title": peer.title,
                                    "reason": "not installed: " + "; ".join(missing) +
                                              " (pip install '.[peers]')"})
                    continue
            for n in ns:
                ours, theirs = peer.match(shape_of(n), defaults)
                cases.append({"variant": variant, "peer": None if no_peers else peer.name, "n": n,
                              "ours_params": _jsonable(ours), "peer_settings": _jsonable(theirs),
                              "peer_title": peer.title, "peer_note": peer.note,
                              "peer_versions": {d: _version(d) for d in peer.distributions}})
    if no_peers:  # one measurement per distinct configuration of ours
        seen, unique = set(), []
        for c in cases:
            key = (c["variant"], c["n"], json.dumps(c["ours_params"], sort_keys=True))
            if key not in seen:
                seen.add(key)
                unique.append({"variant": c["variant"], "peer": None, "n": c["n"], "ours_params": c["ours_params"],
                               "peer_settings": None})
        cases = unique
    return cases, skipped


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=list))


def _ratio(a, b):
    return a / b if (a is not None and b) else None


def _progress(msg: str, end: str = "\n") -> None:
    print(msg, end=end, file=sys.stderr, flush=True)


def run_comparison(args: argparse.Namespace, quiet: bool = False) -> dict:
    """Plan and run every case of ``args`` (the parsed ``build_parser`` arguments); returns the report."""
    devices = _devices(args.device)
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    ns = args.n or [4096]
    variants = args.variants or _default_variants()
    for mod in args.peer_module or ():
        importlib.import_module(mod)
    unknown = sorted(set(args.peers or ()) - set(PEERS))
    if unknown:
        raise UsageError(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    workdir = Path(tempfile.mkdtemp(prefix="attnbench-compare-"))  # the workers' result files

    def shape_of(n: int) -> Shape:
        return Shape(n, args.batch, args.heads, args.head_dim)

    cases, skipped = plan(variants, args.peers, shape_of, ns, args.no_peers, parse_settings(args.set))
    targets = {dev: _torch_device(dev) for dev in devices}  # "cuda" -> this process's (leased) GPU
    machine = {dev: capture(torch.device(target)) for dev, target in targets.items()}
    for info in machine.values():
        info["torch_threads"] = threads
        info["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device()) if torch.cuda.is_available() else None
        info["peer_packages"] = {d: _version(d) for d in PEER_DISTRIBUTIONS}
    report = {
        "kind": "attnbench compare",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "settings": {"n": ns, "batch": args.batch, "heads": args.heads, "head_dim": args.head_dim,
                     "dim": args.heads * args.head_dim, "dtype": "float32", "threads": threads,
                     "warmup": args.warmup, "repeats": args.repeats, "rounds": max(1, args.rounds),
                     "devices": devices, "torch_devices": targets, "seed": args.seed,
                     "gpu_lease": getattr(args, "gpu_lease", None),
                     "step": "forward + backward of the whole layer (projections included), training mode, "
                             "dropout 0, all tokens real",
                     "mask": "ours gets the all-True key_padding_mask tensor, as the pipeline's model passes it; "
                             "each peer gets it in its own library's form, or none where its API means "
                             "'no padding' by none",
                     "time": "median of the repeats after warm-up, perf_counter (device synchronised)",
                     "memory": "peak in a fresh process per implementation above the process's memory before "
                               "the first step: of the first step (peak_bytes) and over the warm-up and later "
                               "steps (peak_all_bytes); on a CPU from a separate run with glibc's mmap threshold "
                               "fixed (live memory, repeatable; each side's memory_method says), the timing runs' "
                               "figures under the default allocator kept as *_default_malloc"},
        "machine": machine,
        "skipped": skipped,
        "cases": [],
    }
    log = (lambda msg, end="\n": None) if quiet else _progress
    log("matmul probe (the machine's rate every case reads against) ...")
    report["matmul_peak"] = {dev: probe_in_fresh_process(target, threads, ["float32"], workdir)["float32"]
                             for dev, target in targets.items()}
    for s in skipped:
        log(f"skip {s['variant']}" + (f" vs {s['peer']}" if s.get("peer") else "") + f": {s['reason']}")
    measured: dict[tuple, dict] = {}  # ours with the same settings is measured once and shared
    try:
        _run_cases(report, cases, targets, args, threads, workdir, measured, log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["table"] = markdown_table(report)
    _write(report, args.out)
    return report


def _run_cases(report, cases, targets, args, threads, workdir, measured, log) -> None:
    """Every case on every device (``targets``: "cpu"/"cuda" -> the torch device the workers use)."""
    rounds = max(1, int(args.rounds))
    for dev, target in targets.items():
        for case in cases:
            case = {**case, "device": dev}
            base = {"variant": case["variant"], "n": case["n"], "batch": args.batch, "heads": args.heads,
                    "head_dim": args.head_dim, "threads": threads, "device": target,
                    "warmup": args.warmup, "repeats": args.repeats, "seed": args.seed,
                    "peer_modules": list(args.peer_module or ())}
            what = f"{case['variant']}" + (f" vs {case['peer']}" if case["peer"] else "") + f" N={case['n']} {dev}"
            key = (case["variant"], case["n"], dev, json.dumps(case["ours_params"], sort_keys=True))
            shared = key in measured
            ours_runs, peer_runs = [], []
            for r in range(rounds):  # ours and the peer alternate, each round in fresh processes
                last = r == rounds - 1 and args.profile
                log(f"{what}" + (f" round {r + 1}/{rounds}" if rounds > 1 else "") + ": ours ...", end="")
                if not shared:
                    ours_runs.append(run_worker({**base, "impl": "ours", "peer": case["peer"],
                                                 "params": case["ours_params"], "profile_dir": last or None},
                                                args.timeout, workdir))
                if case["peer"]:
                    log(" peer ...", end="")
                    peer_runs.append(run_worker({**base, "impl": "peer", "peer": case["peer"],
                                                 "params": case["peer_settings"], "profile_dir": last or None},
                                                args.timeout, workdir))
                log("")
            live = dev == "cpu"  # on CUDA the allocator's own statistics are exact already
            if shared:
                case["ours"] = {**measured[key], "shared": True}
            else:
                case["ours"] = measured[key] = pool_rounds(ours_runs)
                if live:
                    log(f"{what}: live memory, ours ...")
                    with_live_memory(case["ours"], run_worker({**base, **LIVE_RUN, "impl": "ours", "peer": case["peer"],
                                                               "params": case["ours_params"]}, args.timeout, workdir))
            if case["peer"]:
                case["peer_result"] = pool_rounds(peer_runs)
                if live:
                    log(f"{what}: live memory, peer ...")
                    with_live_memory(case["peer_result"], run_worker(
                        {**base, **LIVE_RUN, "impl": "peer", "peer": case["peer"], "params": case["peer_settings"]},
                        args.timeout, workdir))
            finish_case(case, report["matmul_peak"][dev].get("gflops"))
            log(f"{what}: {case['status']}")
            report["cases"].append(case)
            _write(report, args.out)  # a partial file survives an interrupted run


#: the memory run of a CPU case (``probe.LIVE_MEMORY_ENV``): two warm-up steps, one more, untimed
LIVE_RUN = {"live_memory": True, "warmup": 2, "repeats": 1}


def with_live_memory(side: dict, live: dict) -> None:
    """Replace a side's memory figures by its live-memory run's (repeatable); the timing runs'
    figures, under glibc's default allocator, stay beside them as ``*_default_malloc``."""
    if not side.get("ok"):
        return
    side["peak_bytes_default_malloc"] = side["peak_bytes"]
    side["peak_all_bytes_default_malloc"] = side["peak_all_bytes"]
    if not live.get("ok"):
        side["memory_method"] = "timing runs, glibc's default allocator (the live-memory run failed: " \
                                f"{live.get('error', '?')})"
        return
    side["peak_bytes"], side["peak_all_bytes"] = live["peak_bytes"], live["peak_all_bytes"]
    side["memory_method"] = LIVE_MEMORY_METHOD


def pool_rounds(runs: list[dict]) -> dict:
    """One result from the rounds of one implementation: all timed steps pooled (median, min, max),
    the median of the rounds' peaks; the first failure, if any round failed."""
    failed = [r for r in runs if not r.get("ok")]
    if failed or len(runs) == 1:
        return failed[0] if failed else runs[0]
    times = [t for r in runs for t in r["times_s"]]
    out = {**runs[0], "times_s": times, "median_s": statistics.median(times), "min_s": min(times),
           "max_s": max(times), "peak_bytes": int(statistics.median(r["peak_bytes"] for r in runs)),
           "peak_all_bytes": int(statistics.median(r["peak_all_bytes"] for r in runs)),
           "process_wall_s": sum(r["process_wall_s"] for r in runs)}
    out["rounds"] = [{k: r.get(k) for k in ("median_s", "min_s", "max_s", "peak_bytes", "peak_all_bytes", "loadavg")}
                     for r in runs]
    return out


#: a forward+backward step's FLOPs, estimated from the forward's: backward costs about twice the forward
#: (a gradient for each input and each weight of every matmul)
STEP_FLOPS_PER_FORWARD = 3


def achieved(case: dict, side: dict | None, matmul_gflops: float | None) -> None:
    """An implementation's achieved GFLOP/s and its share of the machine's matmul rate, into ``side``:
    FLOPs of a fwd+bwd step = 3x our layer's analytic forward FLOPs (the same mechanism and settings for
    the peer: both are credited with the work the mechanism needs, whatever they spend)."""
    flops = (case["ours"] or {}).get("flops_fwd")
    if not side or not side.get("ok") or not flops or not side.get("median_s"):
        return
    side["gflops"] = STEP_FLOPS_PER_FORWARD * flops / side["median_s"] / 1e9
    side["peak_share"] = share_of_peak(side["gflops"], matmul_gflops)


def finish_case(case: dict, matmul_gflops: float | None = None) -> None:
    ours, peer = case["ours"], case.get("peer_result")
    case["time_ratio"] = case["speedup"] = case["memory_ratio"] = case["memory_all_ratio"] = None
    if not ours.get("ok"):
        case["status"] = "failed (ours): " + ours.get("error", "?")
        return
    achieved(case, ours, matmul_gflops)
    achieved(case, peer, matmul_gflops)
    if peer is None:
        case["status"] = "ok"
        return
    if not peer.get("ok"):
        case["status"] = "failed (peer): " + peer.get("error", "?")
        return
    case["time_ratio"] = _ratio(ours["median_s"], peer["median_s"])
    case["speedup"] = _ratio(peer["median_s"], ours["median_s"])  # above 1: ours is faster
    case["memory_ratio"] = _ratio(ours["peak_bytes"], peer["peak_bytes"]) if peer["peak_bytes"] > 0 else None
    case["memory_all_ratio"] = (_ratio(ours.get("peak_all_bytes"), peer.get("peak_all_bytes"))
                                if (peer.get("peak_all_bytes") or 0) > 0 else None)
    faster = case["time_ratio"] is not None and case["time_ratio"] <= 1.0
    leaner = all(r is not None and r <= 1.0 for r in (case["memory_ratio"], case["memory_all_ratio"]))
    case["goal_met"] = faster and leaner
    case["status"] = "ok"


def _write(report: dict, out: str | Path) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(path)


def _fmt_time(r: dict | None) -> str:
    if not r or not r.get("ok"):
        return "-"
    return f"{r['median_s']:.3f} ({r['min_s']:.3f}-{r['max_s']:.3f})"


def _fmt_mem(r: dict | None) -> str:
    """The first step's peak / the peak over all steps, MiB."""
    if not r or not r.get("ok"):
        return "-"
    every = r.get("peak_all_bytes")
    return f"{r['peak_bytes'] / MIB:.1f} / " + ("-" if every is None else f"{every / MIB:.1f}")


def _fmt_share(r: dict | None) -> str:
    share = (r or {}).get("peak_share")
    return "-" if share is None else f"{100 * share:.0f}%"


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown_table(report: dict) -> str:
    s = report["settings"]
    lines = [f"fwd+bwd, float32, B={s['batch']}, H={s['heads']}, head dim {s['head_dim']} (D={s['dim']}), "
             f"{s['threads']} threads, median of {s['repeats']} timed steps after {s['warmup']} warm-up (min-max)"
             + (f", pooled over {s['rounds']} rounds of fresh processes" if s.get("rounds", 1) > 1 else "") + "; "
             "memory = peak above the memory before the first step, fresh process (MiB): of the first fwd+bwd "
             "step / over three steps; on a CPU measured in a run of its own with glibc's mmap threshold fixed, "
             "so freed memory is returned and the peak is that of live memory (repeatable to ~0.1 MiB; under the "
             "default allocator the same peaks vary 10-20% between processes: in the JSON); "
             "% of matmul peak = the step's FLOPs (3x our layer's analytic forward FLOPs, both sides) per second "
             "over the machine's measured float32 matmul rate"
             + "".join(f" ({dev}: {p['gflops']:.1f} GFLOP/s)" for dev, p in report.get("matmul_peak", {}).items()
                       if p.get("gflops")), "",
             "| variant | ours (settings) | peer | N | device | ours s | peer s | speed-up peer/ours "
             "| ours MiB 1st / all | peer MiB 1st / all | mem ours/peer 1st / all | % of matmul peak ours / peer "
             "| result |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["cases"]:
        peer = c.get("peer_result")
        if c["peer"]:
            label = (peer or {}).get("label") or c.get("peer_title") or c["peer"]
        else:
            label = "(no peer)"
        if c["status"] != "ok":
            result = c["status"].replace("|", "/").replace("\n", " ")[:200]
        elif not c["peer"]:
            result = "ok"
        else:
            result = "goal met" if c.get("goal_met") else "slower or more memory"
        settings = ", ".join(f"{k}={json.dumps(v)}" for k, v in c["ours_params"].items()) or "defaults"
        lines.append(f"| {c['variant']} | {settings} | {label} | {c['n']} | {c['device']} | {_fmt_time(c['ours'])} "
                     f"| {_fmt_time(peer)} | {_fmt_ratio(c.get('speedup'))} | {_fmt_mem(c['ours'])} | {_fmt_mem(peer)} "
                     f"| {_fmt_ratio(c['memory_ratio'])} / {_fmt_ratio(c.get('memory_all_ratio'))} "
                     f"| {_fmt_share(c['ours'])} / {_fmt_share(peer)} | {result} |")
    for sk in report["skipped"]:
        lines.append(f"| {sk['variant']} | - | {sk.get('title') or '-'} | - | - | - | - | - | - | - | - | - "
                     f"| skipped: {sk['reason'].replace('|', '/')[:200]} |")
    return "\n".join(lines)


def _devices(choice: str) -> list[str]:
    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        raise UsageError("--device cuda: no CUDA device is available")
    if choice == "auto":
        return ["cpu", "cuda"] if cuda else ["cpu"]
    return [choice]


def _torch_device(dev: str) -> str:
    """The torch device of "cpu" or "cuda": CUDA's current device, which after a GPU lease is the leased
    one (``CUDA_VISIBLE_DEVICES`` then lists it alone), never a hard-coded index."""
    return "cpu" if dev == "cpu" else f"cuda:{torch.cuda.current_device()}"


def lease_gpu(device: str) -> dict | None:
    """Lease one GPU of a workstation for this run (``--device cuda`` or ``auto``), before anything touches
    ``torch.cuda``: the lease sets ``CUDA_VISIBLE_DEVICES``, which CUDA reads once. None: no lease taken
    (a CPU run, SLURM, or no GPU); the workers inherit the lease's ``CUDA_VISIBLE_DEVICES``."""
    lease = acquire(device)
    if lease:
        _progress(f"gpu lease: device {lease['index']} (CUDA_VISIBLE_DEVICES={lease['cuda_visible_devices']})")
    return lease


def _default_variants() -> list[str]:
    names = VARIANTS.names()
    ordered = [v for v in VARIANT_ORDER if v in names] + [v for v in names if v not in VARIANT_ORDER]
    return ordered + [v for v in VARIANT_ORDER if v not in names]  # missing ones are reported as skipped


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attnbench compare",
        description="Time each attention variant against public PyTorch implementations of the same mechanism "
                    "(forward+backward, float32), each implementation in a fresh process.")
    p.add_argument("--n", type=int, action="append", help="sequence length (repeatable; default 4096)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per implementation (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them (at least 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="fresh processes per implementation, ours and the peer alternating; timed steps are "
                        "pooled (spreads the effect of other load on a shared machine over both sides)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--variants", action="append", help="subset, comma-separated or repeated (default: all)")
    p.add_argument("--peers", action="append", help="subset of peer names, comma-separated or repeated "
                   f"(default: all; known: {', '.join(PEERS)})")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                   help="auto: CPU, and also CUDA where a GPU is present")
    p.add_argument("--out", default=None, help="JSON path (default results/compare/compare-<time>.json)")
    p.add_argument("--set", action="append", metavar="VARIANT.PARAM=VALUE",
                   help="a mechanism setting for both sides instead of our default, e.g. window.window=256 "
                        "(LRA's Longformer); repeatable")
    p.add_argument("--no-peers", action="store_true", help="time our variants only (no peer packages needed)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per implementation process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="also profile one step of each implementation with torch.profiler; op tables go to DIR")
    p.add_argument("--peer-module", action="append", metavar="MODULE",
                   help="import MODULE (in every process) to register extra peers with register_peer()")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.variants, args.peers = _split(args.variants), _split(args.peers)
    if args.out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.out = str(Path("results/compare") / f"compare-{stamp}.json")
    if args.repeats < 1:
        raise UsageError("--repeats must be at least 1")
    args.gpu_lease = lease_gpu(args.device)
    report = run_comparison(args)
    print()
    print(report["table"])
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
