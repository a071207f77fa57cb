"""The GPU software stack checked without a GPU: do the wheels of the ``gpu`` extra agree on their CUDA line?

    python scripts/gpu_stack.py                         # the gpu extra of pyproject.toml, for CPython 3.12 and 3.11
    python scripts/gpu_stack.py --torch '==2.13.0' --xformers '==0.0.35' --python 3.11   # any pair

For each target Python it picks, from the package index (PyPI's JSON simple API), the wheels pip would install
for Linux x86-64: the newest torch that both ``dependencies`` and the ``gpu`` extra admit, and the newest xformers
the extra admits. torch's CUDA line is read from its metadata alone (``<file>.metadata``, PEP 658, about 40 kB; or
HTTP range reads of the wheel's zip directory when the index has no such file), never from the 0.5-1 GB wheel:
its ``nvidia-cuda-runtime-cuXX==X.Y.*`` or ``cuda-toolkit==X.Y.*`` requirement, else its ``nvidia-*-cuXX``
requirements, else a ``+cuXYZ`` local version (``+cpu`` is a CPU build). xformers' comes from its wheel (3 MB,
cached): ``xformers/cpp_lib.json`` (the CUDA and torch it was built with) and the ELF ``NEEDED`` entries of its
compiled extensions (``libcudart.so.12``). They agree when the CUDA major version is the same (the loader needs
the same ``libcudart.so.N``) and xformers was built with a CUDA minor no newer than torch's. When they disagree,
xformers' extension cannot load beside that torch and xformers runs torch's own kernels (``cutlassF-pt``) instead.
Exit status 1 when a pair disagrees; 2 when no package index answers.
"""
from __future__ import annotations

import argparse
import email.parser
import hashlib
import io
import json
import os
import re
import struct
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.tags import Tag, compatible_tags, cpython_tags
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import InvalidVersion, Version
except ImportError:  # a bare interpreter: pip vendors the same library
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.tags import Tag, compatible_tags, cpython_tags
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
    from pip._vendor.packaging.version import InvalidVersion, Version

REPO = Path(__file__).resolve().parent.parent
PYPI = "https://pypi.org/simple"
PYTHONS = ("3.12", "3.11")
TIMEOUT_S = 30
GLIBC_MINOR = 28  # torch's Linux wheels are manylinux_2_28


class IndexUnavailable(RuntimeError):
    """No answer from the package index (no network, a proxy refusing): a check that cannot be made here."""


@dataclass(frozen=True)
class CudaLine:
    """A CUDA toolkit line, ``major.minor`` (minor None when only the major is known), and how it was read."""
    major: int
    minor: int | None
    evidence: str

    def __str__(self) -> str:
        return f"CUDA {self.major}" + (f".{self.minor}" if self.minor is not None else "")


@dataclass
class Verdict:
    python: str
    torch: str                 # "torch 2.13.0 (torch-2.13.0-cp312-...whl)"
    xformers: str
    torch_line: CudaLine | None
    xformers_line: CudaLine | None
    agree: bool
    reason: str

    def __str__(self) -> str:
        mark = "agree" if self.agree else "DISAGREE"
        lines = [f"CPython {self.python}: {mark}",
                 f"  {self.torch}: {self.torch_line or 'no CUDA'}"
                 + (f" ({self.torch_line.evidence})" if self.torch_line else ""),
                 f"  {self.xformers}: {self.xformers_line or 'no CUDA extension'}"
                 + (f" ({self.xformers_line.evidence})" if self.xformers_line else ""),
                 f"  {self.reason}"]
        return "\n".join(lines)


# ---------------------------------------------------------------- reading CUDA lines

def _version_of(spec: SpecifierSet) -> Version | None:
    """The version an exact or lower-bound specifier names (``==12.8.90``, ``>=13.1.0.3``)."""
    for s in sorted(spec, key=lambda s: s.operator not in ("==", "===")):
        if s.operator in ("==", "===", ">=", "~=") and "*" not in s.version:
            try:
                return Version(s.version)
            except InvalidVersion:
                continue
    return None


def torch_cuda_line(version: str, requires_dist: list[str], python: str = "3.12") -> CudaLine | None:
    """The CUDA line of a torch wheel from its version and Requires-Dist on Linux x86-64; None for a CPU or
    ROCm build. Raises ValueError when neither says."""
    env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
    majors: dict[int, str] = {}
    for text in requires_dist:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        pinned = _version_of(req.specifier)
        if (re.fullmatch(r"nvidia-cuda-runtime(-cu\d+)?", name) or name == "cuda-toolkit") and pinned:
            return CudaLine(pinned.major, pinned.minor, f"requires {req.name}{req.specifier}")
        m = re.fullmatch(r"nvidia-[a-z0-9-]+-cu(\d+)", name)
        if m:
            majors.setdefault(int(m.group(1)), f"requires {req.name}{req.specifier}")
    if len(majors) == 1:
        (major, evidence), = majors.items()
        return CudaLine(major, None, evidence)
    local = Version(version).local or ""
    m = re.fullmatch(r"cu(\d+)(\d)", local)
    if m:
        return CudaLine(int(m.group(1)), int(m.group(2)), f"local version +{local}")
    if local.startswith(("cpu", "rocm")):
        return None
    raise ValueError(f"torch {version}: cannot tell its CUDA line (its requirements name CUDA {sorted(majors)})")


def elf_needed(data: bytes) -> list[str]:
    """The DT_NEEDED entries (shared libraries it links) of a 64-bit little-endian ELF file, as `readelf -d` lists."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    needed: list[str] = []
    for _name, sh_type, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if sh_type != 6:  # SHT_DYNAMIC
            continue
        strtab_offset = sections[link][4]
        for pos in range(offset, offset + size, entsize or 16):
            tag, val = struct.unpack_from("<qQ", data, pos)
            if tag == 0:  # DT_NULL
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", strtab_offset + val)
                needed.append(data[strtab_offset + val:end].decode())
    return needed


def xformers_cuda_line(wheel: Path) -> CudaLine | None:
    """The CUDA line of an xformers wheel's compiled extensions: the ``libcudart.so.N`` they link (ELF NEEDED)
    and the CUDA version ``cpp_lib.json`` says they were built with; None when the wheel has no CUDA extension."""
    with zipfile.ZipFile(wheel) as zf:
        built = {}
        if "xformers/cpp_lib.json" in zf.namelist():
            built = json.loads(zf.read("xformers/cpp_lib.json")).get("version", {})
        cudart: dict[int, str] = {}
        for name in zf.namelist():
            if name.endswith(".so"):
                for lib in elf_needed(zf.read(name)):
                    m = re.fullmatch(r"libcudart\.so\.(\d+)", lib)
                    if m:
                        cudart.setdefault(int(m.group(1)), f"{name} NEEDED {lib}")
    if built.get("hip"):
        return None
    cuda = built.get("cuda")  # 1208: 12.8 (12080 in CUDA_VERSION's own encoding)
    if not cudart and not cuda:
        return None
    if len(cudart) > 1:
        raise ValueError(f"{wheel.name}: its extensions link several CUDA runtimes: {sorted(cudart.values())}")
    built_major, built_minor = divmod(cuda, 1000 if cuda and cuda >= 10000 else 100) if cuda else (None, None)
    if cuda and cuda >= 10000:
        built_minor //= 10
    major = next(iter(cudart)) if cudart else built_major
    minor = built_minor if built_major == major else None
    evidence = "; ".join([*cudart.values(), *([f"cpp_lib.json: built with CUDA {cuda} and torch "
                                                f"{built.get('torch')}"] if cuda else [])])
    return CudaLine(major, minor, evidence)


def agree(torch_line: CudaLine | None, xformers_line: CudaLine | None) -> tuple[bool, str]:
    """Whether xformers' extension can load beside this torch, with the reason."""
    if torch_line is None:
        return False, "torch is not a CUDA build: xformers' CUDA extension has nothing to run on"
    if xformers_line is None:
        return False, "xformers has no CUDA extension: it would only run torch's own kernels (cutlassF-pt)"
    if torch_line.major != xformers_line.major:
        return False, (f"torch brings {torch_line}, xformers' extension needs CUDA {xformers_line.major} "
                       f"(libcudart.so.{xformers_line.major}): it cannot load, and xformers falls back to torch's "
                       "own kernels (cutlassF-pt / cutlassB-pt)")
    if None not in (torch_line.minor, xformers_line.minor) and xformers_line.minor > torch_line.minor:
        return False, (f"xformers was built with {xformers_line}, newer than torch's {torch_line}: its extension "
                       "may need CUDA runtime functions torch's runtime lacks")
    return True, f"both CUDA {torch_line.major}: xformers' extension loads beside torch"


# ---------------------------------------------------------------- the package index

def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "attnbench" / "gpu-stack"


def _get(url: str, headers: dict | None = None) -> bytes:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=TIMEOUT_S) as r:
            return r.read()
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, OSError) as exc:
        raise IndexUnavailable(f"{url}: {exc}") from exc


def index_files(name: str, index: str = PYPI) -> list[dict]:
    """The files of a project on a PEP 691 (JSON) simple index: [{"filename", "url", "hashes", "yanked"}]."""
    url = f"{index.rstrip('/')}/{canonicalize_name(name)}/"
    try:
        body = _get(url, {"Accept": "application/vnd.pypi.simple.v1+json"})
    except urllib.error.HTTPError as exc:
        raise IndexUnavailable(f"{url}: HTTP {exc.code}") from exc
    try:
        return json.loads(body)["files"]
    except (ValueError, KeyError) as exc:
        raise IndexUnavailable(f"{url}: not a PEP 691 JSON simple index") from exc


def target_tags(python: str) -> set[Tag]:
    major, minor = (int(x) for x in python.split(".")[:2])
    plats = [f"manylinux_2_{m}_x86_64" for m in range(GLIBC_MINOR, 4, -1)]
    plats += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    return set(cpython_tags((major, minor), platforms=plats)) | set(
        compatible_tags((major, minor), f"cp{major}{minor}", platforms=plats))


def pick(name: str, spec: str, python: str, index: str = PYPI) -> tuple[Version, dict]:
    """The wheel pip would choose for ``name<spec>`` on CPython <python>, Linux x86-64: the newest non-prerelease,
    non-yanked version the specifier admits that has a compatible wheel."""
    specifier, tags = SpecifierSet(spec), target_tags(python)
    best = None  # ((version, build tag), file): pip prefers the highest build tag of a version, as here
    for f in index_files(name, index):
        if not f["filename"].endswith(".whl") or f.get("yanked"):
            continue
        _dist, version, build, wheel_tags = parse_wheel_filename(f["filename"])
        if version in specifier and wheel_tags & tags and (best is None or (version, build) > best[0]):
            best = ((version, build), f)
    if best is None:
        raise LookupError(f"no wheel of {name}{spec} for CPython {python} on Linux x86-64 at {index}")
    return best[0][0], best[1]


class _RangeFile(io.RawIOBase):
    """A remote file read with HTTP range requests, seekable, so that zipfile reads one member of a large wheel."""

    def __init__(self, url: str):
        self.url, self.pos = url, 0
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=TIMEOUT_S) as head:
                self.size = int(head.headers["Content-Length"])
        except (urllib.error.URLError, OSError) as exc:
            raise IndexUnavailable(f"{url}: {exc}") from exc

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        if self.pos >= self.size or len(buffer) == 0:
            return 0
        end = min(self.size, self.pos + len(buffer)) - 1
        data = _get(self.url, {"Range": f"bytes={self.pos}-{end}"})
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)


def wheel_metadata(f: dict, cache: Path) -> str:
    """A wheel's METADATA without its body: PEP 658's ``<url>.metadata`` (PyPI serves it for every wheel, even
    where an index page does not say so), else the zip directory and that one member read with HTTP ranges."""
    path = cache / f"{f['filename']}.metadata"
    if path.exists():
        return path.read_text()
    try:
        text = _get(f["url"] + ".metadata").decode()
    except urllib.error.HTTPError:
        with zipfile.ZipFile(io.BufferedReader(_RangeFile(f["url"]), buffer_size=1 << 16)) as zf:
            member = next(n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
            text = zf.read(member).decode()
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def fetch_wheel(f: dict, cache: Path) -> Path:
    """The whole wheel, downloaded once into the cache and checked against the index's sha256."""
    path = cache / f["filename"]
    want = f.get("hashes", {}).get("sha256")
    if path.exists() and (want is None or hashlib.sha256(path.read_bytes()).hexdigest() == want):
        return path
    try:
        data = _get(f["url"])
    except urllib.error.HTTPError as exc:
        raise IndexUnavailable(f"{f['url']}: HTTP {exc.code}") from exc
    if want and hashlib.sha256(data).hexdigest() != want:
        raise ValueError(f"{f['filename']}: sha256 differs from the index's")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------- the gpu extra

def gpu_extra_specs(pyproject: Path = REPO / "pyproject.toml") -> tuple[str, str]:
    """(torch's specifier, xformers') that ``pip install '.[gpu]'`` resolves under: torch's from ``dependencies``
    and from the extra together."""
    import tomllib
    project = tomllib.loads(pyproject.read_text())["project"]
    specs: dict[str, SpecifierSet] = {"torch": SpecifierSet(), "xformers": SpecifierSet()}
    for text in [*project["dependencies"], *project["optional-dependencies"]["gpu"]]:
        req = Requirement(text)
        if canonicalize_name(req.name) in specs:
            specs[canonicalize_name(req.name)] &= req.specifier
    if not str(specs["xformers"]):
        found = any(canonicalize_name(Requirement(t).name) == "xformers"
                    for t in project["optional-dependencies"]["gpu"])
        if not found:
            raise LookupError("the gpu extra has no xformers: nothing to check")
    return str(specs["torch"]), str(specs["xformers"])


def check(torch_spec: str, xformers_spec: str, python: str, cache: Path | None = None,
          index: str = PYPI) -> Verdict:
    """The verdict on the torch and xformers wheels pip would pick for these specifiers on CPython <python>."""
    cache = cache or default_cache()
    t_version, t_file = pick("torch", torch_spec, python, index)
    meta = email.parser.Parser().parsestr(wheel_metadata(t_file, cache), headersonly=True)
    t_line = torch_cuda_line(str(t_version), meta.get_all("Requires-Dist") or [], python)
    x_version, x_file = pick("xformers", xformers_spec, python, index)
    x_line = xformers_cuda_line(fetch_wheel(x_file, cache))
    ok, reason = agree(t_line, x_line)
    return Verdict(python, f"torch {t_version} ({t_file['filename']})", f"xformers {x_version} ({x_file['filename']})",
                   t_line, x_line, ok, reason)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", help=f"target CPython (repeatable; default {PYTHONS})")
    parser.add_argument("--torch", help="torch's specifier (default: the gpu extra's, with dependencies')")
    parser.add_argument("--xformers", help="xformers' specifier (default: the gpu extra's)")
    parser.add_argument("--index", default=PYPI, help="a PEP 691 JSON simple index (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=None, help="where wheels and metadata are kept")
    args = parser.parse_args(argv)
    torch_spec, xformers_spec = gpu_extra_specs()
    torch_spec = args.torch if args.torch is not None else torch_spec
    xformers_spec = args.xformers if args.xformers is not None else xformers_spec
    print(f"torch{torch_spec} with xformers{xformers_spec}, from {args.index}:")
    unchecked = disagree = False
    for python in args.python or PYTHONS:
        try:
            verdict = check(torch_spec, xformers_spec, python, args.cache, args.index)
        except IndexUnavailable as exc:
            print(f"CPython {python}: not checked, no answer from the index ({exc})")
            unchecked = True
            continue
        print(verdict)
        disagree = disagree or not verdict.agree
    return 1 if disagree else 2 if unchecked else 0

if __name__ == "__main__":
    sys.exit(main())
