"""The peers of ``attnbench compare``: what a peer is (``Peer``), the shape both sides share
(``Shape``) and the registry of every peer (``PEERS``), built like the variants' registry.

Every module of ``attnbench.harness.compare.peers`` registers its peers with ``register_peer`` when
it is imported, and the registry imports every module of that package the first time it is read:
a new peer is one new file there (plus its package in pyproject's ``peers`` extra), listed nowhere
else. ``--peer-module MODULE`` imports one more module, which registers its peers the same way.
Everything that lists peers derives from the registry: ``attnbench compare --list`` (every peer,
its packages and whether they are installed), the packages whose versions go into the JSON
(``PEERS.distributions()``), the peers of a variant, ``--peers``'s help.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torch import nn

from attnbench.harness.core.registry import import_modules
from attnbench.variants import VARIANTS

#: the order of the variants in the output of ``attnbench compare`` and in ``--list`` (the one place it is
#: kept); a registered variant not in it comes after these, alphabetically. A name listed here that no
#: file registers is reported as skipped when every variant is compared.
VARIANT_ORDER = ("window", "sparse", "lsh", "linear", "local", "linformer", "sinkhorn", "nystrom", "synthesizer",
                 "full")
#: distributions whose versions go into the JSON beside the peers' own: the tensor library the lucidrains
#: peers build on
SHARED_DISTRIBUTIONS = ("einops",)
#: distributions a peer may need that are recorded elsewhere in the JSON (``machine.torch``)
RECORDED_ELSEWHERE = ("torch",)


@dataclasses.dataclass(frozen=True)
class Shape:
    """What both sides of a comparison share."""

    n: int
    batch: int = 1
    heads: int = 4
    head_dim: int = 64

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim


#: our variant's parameters, or a peer's settings (JSON-ready after ``json.dumps(..., default=list)``)
Params = dict[str, Any]
#: what ``Peer.build`` returns: the module, or the module and a label that depends on what was importable
Built = nn.Module | tuple[nn.Module, str]


@dataclasses.dataclass(frozen=True)
class Peer:
    """A public implementation of one of our variants' mechanisms.

    ``match(shape, defaults)`` returns (our variant's params, the peer's settings) for the same
    mechanism; ``defaults`` are our variant's config defaults. ``build(shape, settings)`` returns an
    ``nn.Module`` with ``forward(x (B, N, D), key_padding_mask (B, N) bool, True = real) -> (B, N, D)``,
    or a (module, label) pair when the label depends on what was importable. ``requires``: the modules
    it imports (a peer whose modules do not import is skipped); ``distributions``: the pip distributions
    that provide them (their versions are recorded; ``--list`` says whether they are installed).
    """

    name: str
    variant: str
    title: str
    requires: tuple[str, ...]
    distributions: tuple[str, ...]
    match: Callable[[Shape, Params], tuple[Params, Params]]
    build: Callable[[Shape, Params], Built]
    note: str = ""


def _origin(peer: Peer) -> str:
    """The module that defined ``peer`` (of its ``build``), for messages."""
    return str(getattr(peer.build, "__module__", None) or "?")


class PeerRegistry(Mapping[str, Peer]):
    """Peers by name, in ``VARIANT_ORDER`` of their variants and, within a variant, in the order they were
    registered. Reading it first imports every module of ``package`` (each registers its peers)."""

    def __init__(self, package: str):
        self.package = package
        self._peers: dict[str, Peer] = {}
        self._loaded = self._loading = False

    def register(self, peer: Peer) -> Peer:
        """Add ``peer`` (the same peer again changes nothing); a different peer under a taken name is an error."""
        known = self._peers.get(peer.name)
        if known is not None and known != peer:
            raise ValueError(f"peer {peer.name!r} is registered twice: by {_origin(known)} ({known.title}) "
                             f"and by {_origin(peer)} ({peer.title}); choose another name")
        self._peers[peer.name] = peer
        return peer

    def unregister(self, name: str) -> None:
        """Drop a peer registered from outside the package (a test's temporary ``--peer-module``)."""
        self._peers.pop(name, None)

    def _load(self) -> None:
        """Import every module of the package, so that each registers its peers."""
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            import_modules(self.package)
            self._loaded = True
        finally:
            self._loading = False

    def _ordered(self) -> list[Peer]:
        seq = {name: i for i, name in enumerate(self._peers)}
        rank = {v: i for i, v in enumerate(VARIANT_ORDER)}
        return sorted(self._peers.values(),
                      key=lambda p: (rank.get(p.variant, len(rank)), p.variant, seq[p.name]))

    def __getitem__(self, name: str) -> Peer:
        self._load()
        return self._peers[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter([p.name for p in self._ordered()])

    def __len__(self) -> int:
        self._load()
        return len(self._peers)

    def of_variant(self, variant: str) -> list[Peer]:
        """The peers of ``variant``, in registration order."""
        return [p for p in self.values() if p.variant == variant]

    def distributions(self) -> tuple[str, ...]:
        """Every distribution a registered peer needs (torch aside: recorded as ``machine.torch``), then
        ``SHARED_DISTRIBUTIONS``: the packages whose versions the JSON's machine info records."""
        out = [d for p in self.values() for d in p.distributions if d not in RECORDED_ELSEWHERE]
        return tuple(dict.fromkeys([*out, *SHARED_DISTRIBUTIONS]))


#: every peer: the modules of ``attnbench.harness.compare.peers`` and any ``--peer-module``
PEERS = PeerRegistry("attnbench.harness.compare.peers")


def register_peer(peer: Peer) -> Peer:
    """Register ``peer`` in ``PEERS`` (what each peer module calls at import)."""
    return PEERS.register(peer)


def missing_modules(peer: Peer) -> list[str]:
    """The modules of ``peer.requires`` that cannot be imported (not installed or broken)."""
    missing = []
    for mod in peer.requires:
        try:
            importlib.import_module(mod)
        except Exception as exc:  # ImportError, or a package that fails while importing
            missing.append(f"{mod} ({type(exc).__name__}: {exc})")
    return missing


def variant_defaults(variant: str) -> Params:
    """Our variant's config defaults, by parameter."""
    out: Params = {}
    for f in dataclasses.fields(VARIANTS.get(variant).config):
        out[f.name] = f.default_factory() if callable(f.default_factory) else f.default
    return out


def peer_variant(variant: str) -> str:
    """The variant whose peers ``variant`` is timed against: itself, or for a built-in class registered again
    under a second name (a config's ``from:``, as config/zoo.yaml's performer is linear's class) the name
    it was first registered under. A class from outside this repository is its own: it has no peers."""
    try:
        return str(getattr(VARIANTS.get(variant).cls, "registered_name", variant))
    except KeyError:  # not registered: planned as skipped
        return variant


def ordered_variants() -> list[str]:
    """Every variant to compare by default, in ``VARIANT_ORDER``: the registered ones, the others registered
    after them, then the ones listed there but not registered (reported as skipped)."""
    names = VARIANTS.names()
    ordered = [v for v in VARIANT_ORDER if v in names] + [v for v in names if v not in VARIANT_ORDER]
    return ordered + [v for v in VARIANT_ORDER if v not in names]
