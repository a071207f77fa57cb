"""A name -> component registry shared by attention variants and tasks.

Each component registers a class and a config dataclass of its own hyper-parameters.
The dataclass is the single source of defaults and descriptions: the config schema is
generated from it (``dataclass_schema``) so that adding a variant or a task never means
editing the schema.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.metadata
import os
import pkgutil
import sys
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar

from attnbench.harness.core.errors import UserError

_T = TypeVar("_T")


class UnknownNameError(UserError, KeyError):
    """A name that is not registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    cls: type[Any]  # the registered class: a subclass of its registry's base (its attributes are the base's)
    config: type  # a dataclass
    description: str


class ExternalComponentError(UserError, ValueError):
    """A component named from outside the package (``module:Class``) that cannot be used."""


def load_object(source: str) -> Any:
    """The object ``module.path:Attr`` names, imported from the current folder or ``sys.path``
    (the current folder is added to ``sys.path`` as ``python -m`` would: a console script such
    as ``attnbench`` does not have it)."""
    module_name, sep, attr = source.partition(":")
    if not sep or not module_name or not attr:
        raise ExternalComponentError(f"{source!r} is not of the form 'package.module:ClassName'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ExternalComponentError(f"cannot import module {module_name!r} of {source!r} ({exc}); is its folder "
                                     "the current one, on PYTHONPATH, or installed?") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ExternalComponentError(f"module {module_name!r} has no {attr!r} (from {source!r})")
        obj = getattr(obj, part)
    return obj


def import_modules(package: str) -> None:
    """Import every module directly in ``package``, so that each registers what it holds. Sub-packages
    are skipped: a folder there holds shared code (variants/lib/, tasks/lib/), not components."""
    pkg = importlib.import_module(package)
    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.ispkg:
            importlib.import_module(f"{package}.{mod.name}")


class Registry:
    """Components by name: every module of ``package`` (each registers itself on import), the
    installed packages' entry points of group ``entry_points``, and ``name=module:Class`` pairs
    in the environment variable ``env`` (what a config's ``from:`` sets, so that the jobs and
    worker processes a validated config starts see the same components)."""

    def __init__(self, kind: str, package: str, *, entry_points: str | None = None, env: str | None = None,
                 base: type | None = None) -> None:
        self.kind = kind
        self.package = package
        self.entry_points, self.env, self.base = entry_points, env, base
        self._entries: dict[str, Entry] = {}
        self._sources: dict[str, str] = {}  # name -> module:Class of components from outside the package
        self._loaded = self._loading = False

    def register(self, name: str, config: type) -> Callable[[type], type]:
        if not dataclasses.is_dataclass(config):
            raise TypeError(f"{self.kind} {name!r}: config must be a dataclass, got {config!r}")

        def decorator(cls: type) -> type:
            if name in self._entries and self._entries[name].cls is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = (cls.__doc__ or "").strip().splitlines()
            self._entries[name] = Entry(name, cls, config, doc[0] if doc else "")
            if "registered_name" not in cls.__dict__:  # its first name (a class may be registered again)
                # a class attribute every registered class is given at run time: ``type`` declares none
                cls.registered_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def register_source(self, name: str, source: str, *, export: bool = False) -> Entry:
        """Register the class at ``source`` (``package.module:ClassName``) under ``name``: a
        component written outside this package, or a registered one under a second name (with
        other parameters in a config). Its hyper-parameters are its ``Config`` class attribute (a
        dataclass; none: no parameters), or those it is already registered with. Registering the
        same class again under the same name is a no-op. ``export``: also put it in the
        environment variable, for child processes."""
        self._load()
        if not name or not all(c.isalnum() or c in "_-" for c in name):
            raise ExternalComponentError(f"{self.kind} name {name!r}: use letters, digits, '_' or '-'")
        cls = load_object(source)
        if not isinstance(cls, type) or (self.base is not None and not issubclass(cls, self.base)):
            base = f"{self.base.__module__}.{self.base.__name__}" if self.base else "a class"
            raise ExternalComponentError(f"{self.kind} {name!r}: {source!r} is {cls!r}, not a subclass of {base}")
        if name in self._entries and self._entries[name].cls is not cls:
            where = self._sources.get(name) or f"{self.package} (built in)"
            raise ExternalComponentError(f"{self.kind} {name!r} from {source!r}: that name is taken by {where}; "
                                         "choose another name")
        known = [e.config for e in self._entries.values() if e.cls is cls]
        config = known[0] if known else getattr(cls, "Config", None)
        if config is None:
            config = dataclasses.make_dataclass(f"{cls.__name__}Config", [])
            config.__doc__ = f"{name} has no parameters."
        elif not dataclasses.is_dataclass(config):
            raise ExternalComponentError(f"{self.kind} {name!r}: {source}.Config must be a dataclass")
        self.register(name, config)(cls)
        self._sources[name] = source
        if export and self.env:
            self._export()
        return self._entries[name]

    def source(self, name: str) -> str | None:
        """``module:Class`` of a component from outside the package, None for a built-in one."""
        self._load()
        return self._sources.get(name)

    def _export(self) -> None:
        if not self.env:
            return
        os.environ[self.env] = ",".join(f"{n}={s}" for n, s in sorted(self._sources.items()))

    def _load(self) -> None:
        """Import every module of the package so that each file registers itself, then the
        entry points and the environment's components."""
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            import_modules(self.package)
            if self.entry_points:
                for ep in importlib.metadata.entry_points(group=self.entry_points):
                    self.register_source(ep.name, ep.value)
            for item in filter(None, (os.environ.get(self.env, "") if self.env else "").split(",")):
                name, sep, source = item.partition("=")
                if not sep:
                    raise ExternalComponentError(f"${self.env}: {item!r} is not of the form name=package.module:Class")
                self.register_source(name.strip(), source.strip())
            self._loaded = True
        finally:
            self._loading = False

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        self._load()
        if name not in self._entries:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}"
            )
        return self._entries[name]

    def make_config(self, name: str, params: dict[str, Any] | None = None) -> Any:
        """The entry's config dataclass filled from ``params`` (unknown keys are an error)."""
        return build_dataclass(self.get(name).config, params or {}, f"{self.kind} {name!r}")

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.get(n) for n in self.names())


#: a field's metadata key: the field is left out of ``settings_of`` (and so of hashes) while at its default
ADDED_LATER = "x-added-later"


def settings_of(dc: Any) -> dict[str, Any]:
    """A config dataclass's fields and values (``dataclasses.asdict``), but for fields added after configs were
    written with it (``param(..., added_later=True)``) while they are at their default: so that a data set's key
    and a run's config hash stay what they were for every config that does not set them."""
    values = dataclasses.asdict(dc)
    for f in dataclasses.fields(dc):
        if f.metadata.get(ADDED_LATER) and values[f.name] == _default(f):
            del values[f.name]
    return values


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def as_dict(dc: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON-ready values (tuples as lists), as ``settings_of`` gives them."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings_of(dc).items()}


def build_dataclass(cls: type[_T], params: dict[str, Any], where: str) -> _T:
    """An instance of the dataclass ``cls`` from ``params`` (lists become tuples); an unknown key is
    a ValueError naming ``where``."""
    if not dataclasses.is_dataclass(cls):  # what dataclasses.fields would raise
        raise TypeError(f"{where}: {cls!r} is not a dataclass")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"{where}: unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
        )
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return cls(**kwargs)


def _type_schema(tp: Any) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        inner = [_type_schema(a) for a in non_none]
        if type(None) in args:
            inner.append({"type": "null"})
        return inner[0] if len(inner) == 1 else {"anyOf": inner}
    if origin in (tuple, list):
        item = args[0] if args else Any
        return {"type": "array", "items": _type_schema(item) if item is not Any else {}}
    if tp is dict or origin is dict:  # a nested mapping, e.g. another component's parameters
        value = args[1] if len(args) == 2 else Any
        return {"type": "object", **({"additionalProperties": _type_schema(value)} if value is not Any else {})}
    raise TypeError(f"no JSON schema for config field type {tp!r}")


def dataclass_schema(cls: type) -> dict[str, Any]:
    """JSON schema of a config dataclass: types, defaults, descriptions (``metadata['help']``),
    bounds (``metadata['minimum']``/``['maximum']``/...: a sequence's apply to each item, and
    ``minItems``/``maxItems`` to its length), and no unknown keys."""
    hints = typing.get_type_hints(cls, include_extras=False)
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        prop = _type_schema(hints[f.name])
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"{cls.__name__}.{f.name} needs a default to be a config field")
        prop["default"] = list(default) if isinstance(default, tuple) else default
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems",
                    "x-registry", "x-overrides"):
            if key in f.metadata:
                # a sequence's numeric bounds are its items' (minItems/maxItems: its length)
                in_items = prop.get("type") == "array" and key not in ("minItems", "maxItems", "x-registry",
                                                                       "x-overrides")
                (prop["items"] if in_items else prop)[key] = f.metadata[key]
        prop["description"] = f.metadata.get("help", "")
        props[f.name] = prop
    return {
        "type": "object",
        "description": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
        "properties": props,
        "additionalProperties": False,
        "default": {},
    }


def param(default: Any, help: str, *, added_later: bool = False, **bounds: Any) -> Any:
    """A config dataclass field with a description and optional JSON-schema bounds
    (``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``: of each item for a sequence,
    whose length ``minItems`` and ``maxItems`` bound; ``**{"x-registry": "variant"}`` makes a mapping
    field one entry per registered variant, each with that variant's parameters). ``added_later``: a
    field added after configs were written with its dataclass, hashed only where it is set
    (``settings_of``), so that records and cached data of those configs stay valid.

    A mapping default (a ``dict[str, Any]`` field: an object in the schema) is copied for
    each instance; sequences take a tuple default."""
    if isinstance(default, list):
        raise TypeError("use a tuple for sequence defaults")
    metadata = {"help": help, **bounds, **({ADDED_LATER: True} if added_later else {})}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
