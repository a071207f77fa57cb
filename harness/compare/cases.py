"""The cases of an ``attnbench compare`` run: planned (``plan``: one ``PlannedCase`` per variant, peer and
N; a ``Skip`` for each variant or peer that cannot run) and measured (``CaseResult``: both sides on one
device, and ``finish_case``'s ratios and verdict)."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

from attnbench.harness.compare.registry import (
    PEERS,
    Params,
    Shape,
    missing_modules,
    peer_variant,
    variant_defaults,
)
from attnbench.harness.compare.results import SideResult, with_rate
from attnbench.harness.results.environment import distribution_version
from attnbench.variants import VARIANTS


@dataclasses.dataclass(frozen=True)
class PlannedCase:
    """One variant against one peer (or alone: ``peer`` None) at one N, with the settings both sides run."""

    variant: str
    peer: str | None
    n: int
    ours_params: Params
    peer_settings: Params | None
    # the peer's description, for cases planned with a peer
    peer_title: str | None = None
    peer_note: str | None = None
    peer_versions: dict[str, str | None] | None = None

    @property
    def ours_key(self) -> tuple[str, int, str]:
        """Our side's configuration: cases with the same one measure ours once."""
        return self.variant, self.n, json.dumps(self.ours_params, sort_keys=True)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"variant": self.variant, "peer": self.peer, "n": self.n,
                               "ours_params": self.ours_params, "peer_settings": self.peer_settings}
        if self.peer_title is not None:
            out.update(peer_title=self.peer_title, peer_note=self.peer_note, peer_versions=self.peer_versions)
        return out


@dataclasses.dataclass(frozen=True)
class Skip:
    """A variant, or one of its peers, that is not compared, and why."""

    variant: str
    peer: str | None
    reason: str
    title: str | None = None  # the peer's

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"variant": self.variant, "peer": self.peer}
        if self.title is not None:
            out["title"] = self.title
        out["reason"] = self.reason
        return out


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """A planned case measured on one device: both sides, then (``finish_case``) their ratios (ours / peer
    time and memory; speed-up = peer / ours time), the goal (ours no slower and no larger) and a status."""

    case: PlannedCase
    device: str
    ours: SideResult
    peer_result: SideResult | None = None
    time_ratio: float | None = None
    speedup: float | None = None
    memory_ratio: float | None = None
    memory_all_ratio: float | None = None
    goal_met: bool | None = None
    status: str = ""

    def to_json(self) -> dict[str, Any]:
        out = {**self.case.to_json(), "device": self.device, "ours": self.ours.to_json()}
        if self.case.peer:
            out["peer_result"] = self.peer_result.to_json() if self.peer_result is not None else None
        out.update(time_ratio=self.time_ratio, speedup=self.speedup, memory_ratio=self.memory_ratio,
                   memory_all_ratio=self.memory_all_ratio)
        if self.goal_met is not None:
            out["goal_met"] = self.goal_met
        out["status"] = self.status
        return out


def _jsonable(d: Params) -> Params:
    out: Params = json.loads(json.dumps(d, default=list))
    return out


def plan(variants: Sequence[str], peers: Sequence[str] | None, shape_of: Callable[[int], Shape],
         ns: Sequence[int], no_peers: bool = False, settings: dict[str, Params] | None = None,
         alone: bool = False) -> tuple[list[PlannedCase], list[Skip]]:
    """(cases, skipped): one case per (variant, peer, N); skipped variants and peers with reasons.
    ``settings``: per variant, parameters that replace its defaults before each peer matches them.
    ``alone``: a variant with no peer to run (none registered, or none installed) is timed alone with
    its settings rather than skipped (``--config``: every variant of the config is timed)."""
    known = set(VARIANTS.names())
    cases: list[PlannedCase] = []
    skipped: list[Skip] = []
    for variant in variants:
        if variant not in known:
            skipped.append(Skip(variant, None, f"variant {variant!r} is not registered: not a file of variants/, "
                                               "an installed package's entry point nor a config's `from:` "
                                               "(attnbench compare --config CONFIG brings a config's)"))
            continue
        own = _jsonable((settings or {}).get(variant, {}))
        mine = peer_variant(variant)
        if peers is None:
            vpeers = PEERS.of_variant(mine)
        else:  # in the order given
            vpeers = [PEERS[name] for name in peers if name in PEERS and PEERS[name].variant == mine]
        if not vpeers:
            if no_peers or alone:
                cases.extend(PlannedCase(variant, None, n, own, None) for n in ns)
            else:
                skipped.append(Skip(variant, None, "no public peer registered for it"))
            continue
        planned = len(cases)
        defaults = {**variant_defaults(variant), **(settings or {}).get(variant, {})}
        for peer in vpeers:
            if not no_peers:
                missing = missing_modules(peer)
                if missing:
                    skipped.append(Skip(variant, peer.name, "not installed: " + "; ".join(missing) +
                                        " (pip install '.[peers]')", title=peer.title))
                    continue
            for n in ns:
                ours, theirs = peer.match(shape_of(n), defaults)
                if no_peers:
                    cases.append(PlannedCase(variant, None, n, _jsonable(ours), None))
                else:
                    cases.append(PlannedCase(variant, peer.name, n, _jsonable(ours), _jsonable(theirs),
                                             peer_title=peer.title, peer_note=peer.note,
                                             peer_versions={d: distribution_version(d) for d in peer.distributions}))
        if alone and len(cases) == planned:  # every peer missing: ours still runs
            cases.extend(PlannedCase(variant, None, n, own, None) for n in ns)
    if no_peers:  # one measurement per distinct configuration of ours
        seen: set[tuple[str, int, str]] = set()
        unique = []
        for c in cases:
            if c.ours_key not in seen:
                seen.add(c.ours_key)
                unique.append(c)
        cases = unique
    return cases, skipped


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if (a is not None and b) else None


def finish_case(case: CaseResult, matmul_gflops: float | None = None) -> CaseResult:
    """``case`` with both sides' achieved rates, the ratios, the goal and the status."""
    ours, peer = case.ours, case.peer_result
    blank = dataclasses.replace(case, time_ratio=None, speedup=None, memory_ratio=None, memory_all_ratio=None,
                                goal_met=None)
    if not ours.ok:
        return dataclasses.replace(blank, status="failed (ours): " + (ours.error or "?"))
    ours = with_rate(ours, ours.flops_fwd, matmul_gflops)
    peer = with_rate(peer, ours.flops_fwd, matmul_gflops) if peer is not None else None
    rated = dataclasses.replace(blank, ours=ours, peer_result=peer)
    if peer is None:
        return dataclasses.replace(rated, status="ok")
    if not peer.ok:
        return dataclasses.replace(rated, status="failed (peer): " + (peer.error or "?"))
    time_ratio = _ratio(ours.median_s, peer.median_s)
    memory_ratio = _ratio(ours.peak_bytes, peer.peak_bytes) if (peer.peak_bytes or 0) > 0 else None
    memory_all_ratio = _ratio(ours.peak_all_bytes, peer.peak_all_bytes) if (peer.peak_all_bytes or 0) > 0 else None
    faster = time_ratio is not None and time_ratio <= 1.0
    leaner = all(r is not None and r <= 1.0 for r in (memory_ratio, memory_all_ratio))
    return dataclasses.replace(rated, time_ratio=time_ratio, speedup=_ratio(peer.median_s, ours.median_s),
                               memory_ratio=memory_ratio, memory_all_ratio=memory_all_ratio,
                               goal_met=faster and leaner, status="ok")
