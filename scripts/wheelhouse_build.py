"""``python scripts/wheelhouse.py build`` (`make wheelhouse`, with network; scripts/wheelhouse.py's doc says what it
does): the node's target (its Python on manylinux x86-64), pip's resolution of attnbench's requirements for it, and
the download of what the node does not have, with the manifest the install reads. Imports only the standard library
(``packaging`` when it runs: the venv's, else pip's own copy)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANIFEST = "wheelhouse.json"
MIB = 2 ** 20
#: what a GPU node's torch brings (never downloaded: torch and its CUDA libraries are GBs, and must match the driver)
NODE_ONLY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
#: glibc of the oldest manylinux tag a wheel may carry: torch's wheels are manylinux_2_28, so the node has >= 2.28
GLIBC_MINOR = 28


def canon(name: str) -> str:
    """PEP 503 normalised name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def platforms(arch: str = "x86_64", glibc_minor: int = GLIBC_MINOR) -> list[str]:
    """manylinux tags a Linux with glibc 2.<glibc_minor> runs, newest first (pip's --platform does not expand
    manylinux_2_X itself), with the legacy aliases of 2.17, 2.12 and 2.5."""
    tags = [f"manylinux_2_{m}_{arch}" for m in range(glibc_minor, 4, -1)]
    return tags + [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]


# ---------------------------------------------------------------- build (packaging: the venv's or pip's own copy)

def _packaging():
    try:
        from packaging.requirements import Requirement
        from packaging.specifiers import SpecifierSet
        from packaging.utils import parse_wheel_filename
    except ImportError:  # a bare interpreter: pip vendors the same library
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.specifiers import SpecifierSet
        from pip._vendor.packaging.utils import parse_wheel_filename
    return Requirement, SpecifierSet, parse_wheel_filename


def project_requirements(pyproject: Path, extras: list[str]) -> tuple[list[str], list[str]]:
    """(the project's runtime requirements with the chosen extras, its build requirements) from pyproject.toml."""
    import tomllib
    data = tomllib.loads(pyproject.read_text())
    project = data["project"]
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        if extra not in project.get("optional-dependencies", {}):
            raise SystemExit(f"wheelhouse: pyproject.toml has no extra {extra!r}")
        reqs += project["optional-dependencies"][extra]
    return reqs, list(data.get("build-system", {}).get("requires", []))


def read_have(path: Path | None) -> dict[str, str | None]:
    """{name: version or None} from a `pip freeze` output or a list of names (comments, -e and options skipped)."""
    have: dict[str, str | None] = {}
    if path is None:
        return have
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?:==\s*([^\s;]+)|@.*)?\s*$", line)
        if not m:
            raise SystemExit(f"wheelhouse: {path}: cannot read {raw!r} (a name, or name==version as pip freeze "
                             "writes it)")
        have[canon(m.group(1))] = m.group(2)
    return have


def marker_env(python_version: str) -> dict[str, str]:
    """PEP 508 marker variables of CPython <python_version> on Linux x86-64."""
    parts = python_version.split(".")
    short = ".".join(parts[:2])
    full = python_version if len(parts) >= 3 else f"{short}.0"
    return {"python_version": short, "python_full_version": full, "implementation_name": "cpython",
            "implementation_version": full, "platform_python_implementation": "CPython", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "platform_release": "", "platform_version": "", "extra": ""}


def pip_platform_args(python_version: str) -> list[str]:
    """pip's options for binary wheels of CPython <python_version> on manylinux x86-64."""
    args = ["--only-binary=:all:", "--python-version", "".join(python_version.split(".")[:2])]
    for tag in platforms():
        args += ["--platform", tag]
    return args


def build_pure_wheel(req: str, dest: Path, pip_env: dict | None) -> Path:
    """A wheel built here from the sdist of ``req`` (a project that publishes no wheel), refused unless it is pure
    Python (``none-any``: it then runs on the node's Python whatever this one is)."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                               "--wheel-dir", tmp, req], capture_output=True, text=True, env=pip_env)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1 or not wheels[0].name.endswith("-none-any.whl"):
            raise SystemExit(f"wheelhouse: {req} has no wheel for the node, and none that runs there could be built "
                             f"from its sdist:\n{done.stdout}{done.stderr}")
        return Path(shutil.move(str(wheels[0]), dest / wheels[0].name))


def resolve(reqs: list[str], constraints: dict[str, str], python_version: str, local: Path,
            pip_env: dict | None, never_build: set[str]) -> tuple[list[dict], bool]:
    """pip's own resolution of ``reqs`` for the node (``pip install --dry-run --report``, binary wheels for its
    Python and platform): (the report's install items, whether the node's versions held as constraints).

    pip cannot resolve for another Python with sdists, so a first resolution for this interpreter, sdists allowed
    (and without the node's versions, which this Python may not install), finds the projects that publish no
    wheel; each is built into a wheel in ``local`` (pure Python only). The resolution for the node then holds the
    node's packages at their versions; where no resolution does (a node's package too old or too new for one of
    attnbench's requirements), it runs without them, and the caller carries what the node's versions fail."""
    with tempfile.TemporaryDirectory() as tmp:
        cfile, report = Path(tmp, "constraints.txt"), Path(tmp, "report.json")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--target", str(Path(tmp, "target")), "--report", str(report),
               "--find-links", str(local), "--constraint", str(cfile)]
        passes = [(["--prefer-binary"], {}), (pip_platform_args(python_version), constraints)]
        if constraints:
            passes.append((pip_platform_args(python_version), {}))
        for i, (platform_args, pins) in enumerate(passes):
            cfile.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
            done = subprocess.run(cmd + platform_args + reqs, capture_output=True, text=True, env=pip_env)
            if done.returncode == 0 and i > 0:
                return json.loads(report.read_text())["install"], bool(pins)
            if done.returncode != 0 and i < len(passes) - 1 and pins:
                continue  # the node's versions admit no resolution: the next pass goes without them
            if done.returncode != 0:
                raise SystemExit(f"wheelhouse: pip cannot resolve attnbench's requirements for CPython "
                                 f"{python_version} on manylinux x86-64:\n{done.stderr}")
            for item in json.loads(report.read_text())["install"]:
                name, version = canon(item["metadata"]["name"]), item["metadata"]["version"]
                if not item["download_info"]["url"].endswith(".whl") and name not in never_build:
                    build_pure_wheel(f"{name}=={version}", local, pip_env)
    raise AssertionError("unreachable")


def build(out: Path, python_version: str, have_file: Path | None, extras: list[str], max_mib: float = 64.0,
          pip_env: dict | None = None) -> dict:
    """Download the wheelhouse into ``out`` (see scripts/wheelhouse.py's doc); returns its manifest."""
    Requirement, SpecifierSet, parse_wheel_filename = _packaging()
    started = time.perf_counter()
    env = marker_env(python_version)
    have = read_have(have_file)
    runtime, build_reqs = project_requirements(REPO / "pyproject.toml", extras)
    node_side = {n for n in have if n not in {canon(Requirement(r).name) for r in build_reqs}}
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # written last: a build that stops half way leaves no wheelhouse
    for stale in out.glob("*.whl"):  # a wheelhouse is rebuilt whole: no wheel of another target stays behind
        stale.unlink()
    with tempfile.TemporaryDirectory() as local_dir:
        local = Path(local_dir)
        # the node's packages at the node's versions (a local version such as +cu130 is not on the index)
        constraints = {n: v.split("+")[0] for n, v in have.items() if v and n in node_side and not NODE_ONLY.match(n)}
        top = [r for r in runtime if not NODE_ONLY.match(canon(Requirement(r).name))]
        resolved, held = resolve(top, constraints, python_version, local, pip_env, set(have) | {"torch", "triton"})
        items = {canon(i["metadata"]["name"]): i for i in resolved}

        # What attnbench needs that the node does not have: the requirements reachable from attnbench's without
        # passing through a package of the node (which has that package's own requirements). A node's package at a
        # version some requirement excludes is carried. One the node list names without a version, when pure
        # Python, is carried as well, as a fallback: pip takes it only where the node's own version does not
        # satisfy a requirement (an ML image's packaging 26 against snakemake's packaging<26).
        needed: dict[str, set] = {}       # name -> extras asked of it
        required_by: dict[str, set] = {}
        fallbacks: set[str] = set()
        unsuited: dict[str, str] = {}     # the node's packages at a version a requirement excludes -> why
        expected: dict[str, dict] = {}    # the node's packages attnbench's requirements reach, with their specifiers
        stack = [(Requirement(r), "attnbench", set()) for r in runtime]
        while stack:
            req, parent, parent_extras = stack.pop()
            if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e})
                                                  for e in (parent_extras or {""})):
                continue
            name = canon(req.name)
            node_version = have.get(name)
            if node_version and name in node_side and not NODE_ONLY.match(name) and not req.specifier.contains(
                    node_version.split("+")[0], prereleases=True):
                unsuited.setdefault(name, f"{name} {node_version} (the node's) against {parent}'s {req}")
            if (NODE_ONLY.match(name) or name in node_side) and name not in unsuited:
                entry = expected.setdefault(name, {"specifier": "", "required_by": [], "have": node_version})
                entry["specifier"] = str(SpecifierSet(entry["specifier"]) & req.specifier)
                entry["required_by"] = sorted({*entry["required_by"], parent})
                pure = name in items and items[name]["download_info"]["url"].endswith("-none-any.whl")
                if NODE_ONLY.match(name) or node_version is not None or not pure:
                    continue
                fallbacks.add(name)
            if name in unsuited:
                expected.pop(name, None)
            required_by.setdefault(name, set()).add(parent)
            new = set(req.extras) - needed.get(name, set())
            if name in needed and not new:
                continue
            needed[name] = needed.get(name, set()) | new
            item = items[name]
            stack += [(Requirement(r), f"{name} {item['metadata']['version']}", needed[name])
                      for r in item["metadata"].get("requires_dist", [])]
        pins = [f"{n}=={items[n]['metadata']['version']}" for n in sorted(needed)]
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                        "--dest", str(out), "--find-links", str(local), *pip_platform_args(python_version), *pins,
                        *build_reqs], check=True, env=pip_env)

    wheels = sorted(out.glob("*.whl"))
    by_name = {canon(parse_wheel_filename(p.name)[0]): p for p in wheels}
    total = sum(p.stat().st_size for p in wheels)
    notes = ([] if held or not constraints else
             ["no resolution holds every package of the node at its version: resolved without them"])
    notes += [f"carried, the node's version does not suit: {why}" for why in unsuited.values()]
    manifest = {
        "python_version": ".".join(python_version.split(".")[:2]),
        "platforms": platforms(),
        "extras": extras,
        "have": str(have_file) if have_file else None,
        "size_mib": round(total / MIB, 2),
        "wheels": [{"file": p.name, "name": n, "size": p.stat().st_size, "fallback": n in fallbacks,
                    "required_by": sorted(required_by.get(n, {"attnbench (build)"}))}
                   for n, p in sorted(by_name.items())],
        "from_node": dict(sorted(expected.items())),
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if total > max_mib * MIB:  # no manifest: `make gpu-check` does not take the folder for a wheelhouse
        (out / MANIFEST).unlink(missing_ok=True)
        raise SystemExit(f"wheelhouse: {total / MIB:.1f} MiB is over the limit of {max_mib:g} MiB (--max-mib); the "
                         "largest: " + ", ".join(f"{p.name} ({p.stat().st_size / MIB:.1f} MiB)" for p in
                                                 sorted(wheels, key=lambda p: -p.stat().st_size)[:5]) + "; "
                         + " ".join(notes))
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    carried = sorted(fallbacks)
    print(f"wheelhouse: {len(wheels)} wheels, {total / MIB:.1f} MiB, for CPython {manifest['python_version']} on "
          f"manylinux_2_{GLIBC_MINOR} x86-64, in {out}/ ({manifest['seconds']:.0f} s); expected from the node: "
          f"{', '.join(sorted(expected))}" + (f"; carried as fallbacks of those: {', '.join(carried)}"
                                               if carried else ""))
    for note in notes:
        print(f"wheelhouse: {note}")
    return manifest
