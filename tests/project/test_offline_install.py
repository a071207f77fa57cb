"""The offline install over a preinstalled torch (docs/gpu.md), on a CPU: the CPU twin of `make gpu-check`
on a GPU node without network, which has a CUDA torch of its own and none of attnbench's other dependencies.

- The wheelhouse `make wheelhouse` builds for the node attnbench targets (CPython 3.12; what it already has:
  scripts/gpu_node_packages.txt) is under the 64 MiB that travels to such a node, carries none of the node's
  packages but small pure-Python fallbacks (no torch, no numpy), and only wheels that install on CPython 3.12 /
  manylinux_2_28 x86-64.
- From a wheelhouse built by the same command for this Python, `make gpu-check ARGS=--dry-run` with TORCH_PYTHON a
  stand-in node (an interpreter that sees this venv's torch, numpy, pandas... the default node list and what they
  need, and nothing else) installs with no network (in a network namespace of its own where this machine allows
  one; in any case pip runs with no index and no configuration) and starts: scripts/gpu_check.py plans its stages.

Building a wheelhouse needs a package index: without an answer from PyPI these tests skip, saying so. Wheelhouses
are cached under ~/.cache/attnbench/wheelhouse-tests/<hash of pyproject.toml, the node's packages and the scripts>,
so only a first run downloads (about a minute per wheelhouse: pip resolves the requirements for the target
Python); the install itself takes about 25 s on 2 cores.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from conftest import REPO, load_script

SCRIPT = REPO / "scripts" / "wheelhouse.py"
NODE_LIST = REPO / "scripts" / "gpu_node_packages.txt"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "attnbench" / "wheelhouse-tests"
LIMIT_MIB = 64


def index_answers() -> str | None:
    """None when PyPI answers, else why not."""
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=15).close()
    except OSError as exc:
        return f"no answer from PyPI ({exc}): a wheelhouse cannot be built here"
    return None


def wheelhouse(python_version: str, have: Path) -> Path:
    """The wheelhouse `scripts/wheelhouse.py build` makes for this target, cached by what determines it."""
    scripts = [p.read_bytes() for p in sorted(SCRIPT.parent.glob("wheelhouse*.py"))]  # the command and its modules
    key = hashlib.sha256(b"\0".join([python_version.encode(), (REPO / "pyproject.toml").read_bytes(),
                                     have.read_bytes(), *scripts])).hexdigest()[:16]
    out = CACHE / f"py{python_version}-{key}"
    if (out / "wheelhouse.json").is_file():
        return out
    reason = index_answers()
    if reason:
        pytest.skip(reason)
    shutil.rmtree(out, ignore_errors=True)
    wh = load_script("wheelhouse")
    # pip's configuration files and PIP_* variables are left out: a machine's find-links or extra index
    # (this one's has /opt/wheels) must not decide what the wheelhouse holds
    done = subprocess.run([sys.executable, str(SCRIPT), "build", "--out", str(out), "--python-version",
                           python_version, "--have", str(have), "--no-pip-config"],
                          capture_output=True, text=True, env=wh.clean_pip_env())
    if done.returncode != 0:
        shutil.rmtree(out, ignore_errors=True)
        if re.search(r"(Max retries|Temporary failure|Could not fetch|Network is unreachable|timed out)", done.stderr):
            pytest.skip(f"the package index stopped answering while the wheelhouse was built:\n{done.stderr[-800:]}")
        pytest.fail(f"wheelhouse build failed:\n{done.stdout}\n{done.stderr}")
    return out


def node_names() -> list[str]:
    return [canonicalize_name(line.split("#")[0].strip()) for line in NODE_LIST.read_text().splitlines()
            if line.split("#")[0].strip()]


@pytest.mark.slow
def test_wheelhouse_for_the_gpu_node_fits_and_leaves_the_node_alone():
    wh = wheelhouse("3.12", NODE_LIST)
    manifest = json.loads((wh / "wheelhouse.json").read_text())
    wheels = sorted(wh.glob("*.whl"))
    size = sum(p.stat().st_size for p in wheels)
    assert size < LIMIT_MIB * 2 ** 20, f"{size / 2 ** 20:.1f} MiB"
    names = {canonicalize_name(parse_wheel_filename(p.name)[0]): p for p in wheels}
    node = set(node_names()) - {"setuptools"}  # setuptools: the editable install's build backend, always carried
    # of the node's packages only small pure-Python fallbacks travel (pip takes one only where the node's own
    # version does not do): none of numpy, pandas, pyarrow, scipy..., and never torch or its CUDA wheels
    fallbacks = {w["name"] for w in manifest["wheels"] if w["fallback"]}
    assert set(names) & node == fallbacks, f"carried, though the node has them: {sorted(set(names) & node)}"
    assert all(names[n].name.endswith("-none-any.whl") for n in fallbacks)
    assert sum(names[n].stat().st_size for n in fallbacks) < 8 * 2 ** 20
    assert not {"numpy", "pandas", "pyarrow", "scipy", "scikit-learn", "matplotlib", "pillow"} & set(names)
    assert not {n for n in names if re.match(r"^(torch|triton|nvidia-.*|cuda-.*)$", n)}
    assert {"snakemake", "jsonschema", "import-linter", "datasets", "setuptools"} <= set(names)
    plats = load_script("wheelhouse_build").platforms()
    tags = set(cpython_tags((3, 12), platforms=plats)) | set(compatible_tags((3, 12), "cp312", platforms=plats))
    assert all(parse_wheel_filename(p.name)[3] & tags for p in wheels), "a wheel that CPython 3.12 cannot install"
    # what the node must bring, with the specifiers the install will hold it to
    torch_spec = next(Requirement(r).specifier for r in tomllib_project()["dependencies"]
                      if canonicalize_name(Requirement(r).name) == "torch")
    assert manifest["from_node"]["torch"]["specifier"] == str(torch_spec)
    assert manifest["python_version"] == "3.12" and manifest["size_mib"] < LIMIT_MIB


def tomllib_project() -> dict:
    import tomllib
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def stand_in_node(root: Path) -> tuple[Path, Path]:
    """(a Python that sees only a node's packages, its `pip freeze`): a bare venv of this interpreter whose one
    .pth adds a folder of links to the distributions of this venv that the default node list names (torch, numpy,
    pandas, pytest...) and to what they require, and to nothing else of attnbench's dependencies."""
    site = Path(sysconfig.get_paths()["purelib"])
    dists = {canonicalize_name(d.metadata["Name"]): d for d in importlib.metadata.distributions(path=[str(site)])}
    env = default_environment()
    keep, stack = set(), [n for n in node_names() if n in dists]
    while stack:
        name = stack.pop()
        if name in keep:
            continue
        keep.add(name)
        for text in dists[name].requires or []:
            req = Requirement(text)
            if (req.marker is None or req.marker.evaluate({**env, "extra": ""})) and canonicalize_name(
                    req.name) in dists:
                stack.append(canonicalize_name(req.name))
    assert "torch" in keep, "this venv has no torch"
    folder = root / "node-site"
    folder.mkdir(parents=True)
    tops = {f.parts[0] for n in keep for f in dists[n].files or []
            if f.parts[0] not in ("..", "__pycache__") and not f.parts[0].endswith(".pth")}
    for top in sorted(tops):
        if (site / top).exists():
            (folder / top).symlink_to(site / top)
    base = Path(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(root / "node")], check=True)
    node_site = subprocess.run([str(root / "node" / "bin" / "python"), "-c",
                                "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip()
    Path(node_site, "node.pth").write_text(f"import site; site.addsitedir({str(folder)!r})\n")
    freeze = root / "node-freeze.txt"
    freeze.write_text("".join(f"{dists[n].metadata['Name']}=={dists[n].version}\n" for n in sorted(keep)))
    return root / "node" / "bin" / "python", freeze


def without_network() -> list[str]:
    """A command prefix that runs a command in a network namespace of its own (no network at all), where this
    machine allows one; else none (pip still runs with no index and no configuration)."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


@pytest.mark.slow
def test_gpu_check_installs_and_starts_offline_over_a_preinstalled_torch(tmp_path):
    node_python, freeze = stand_in_node(tmp_path)
    node_torch = subprocess.run([str(node_python), "-c", "import torch; print(torch.__file__)"],
                                capture_output=True, text=True, check=True).stdout.strip()
    assert subprocess.run([str(node_python), "-c", "import snakemake"], capture_output=True).returncode != 0
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    wh = wheelhouse(py, freeze)
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "MAKE", "VIRTUAL_ENV"))}
    cmd = [*without_network(), "make", "--no-print-directory", "-C", str(REPO), "gpu-check", "ARGS=--dry-run",
           f"VENV={venv}", f"WHEELHOUSE={wh}", f"TORCH_PYTHON={node_python}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert re.search(r"^install: [\d.]+ s, no network", done.stdout, re.M), done.stdout
    assert "dry run: nothing was run" in done.stdout
    record = json.loads((venv / ".install.json").read_text())
    assert record["mode"] == "offline" and Path(record["torch_file"]).resolve() == Path(node_torch).resolve()
    # attnbench's own dependencies came from the wheelhouse into the venv; torch stayed the node's
    venv_site = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                     "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    installed = {canonicalize_name(d.metadata["Name"]) for d in importlib.metadata.distributions(path=[str(venv_site)])}
    assert {"snakemake", "jsonschema", "import-linter", "datasets"} <= installed
    assert "torch" not in installed and "numpy" not in installed
