"""``attnbench compare --list``: every registered peer, one line each: its variant, its name, the pip
distributions it needs (installed, with the version, or missing) and what it is; then, per peer, what
differs from ours (its ``note``)."""
from __future__ import annotations

from collections.abc import Iterable

from attnbench.harness.compare.registry import Peer
from attnbench.harness.results.environment import distribution_version


def package_status(dist: str) -> str:
    version = distribution_version(dist)
    return f"{dist} {version}" if version else f"{dist} (missing)"


def peer_lines(peers: Iterable[Peer]) -> list[str]:
    """A header and a line per peer, in columns."""
    rows = [("variant", "peer", "packages", "implementation")]
    rows += [(p.variant, p.name, "; ".join(package_status(d) for d in p.distributions) or "-", p.title)
             for p in peers]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return ["  ".join([*(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=True)), r[3]]) for r in rows]


def note_lines(peers: Iterable[Peer]) -> list[str]:
    """What differs from ours, one paragraph per peer that says (its ``note``)."""
    return [f"{p.name}: {' '.join(p.note.split())}" for p in peers if p.note.strip()]
