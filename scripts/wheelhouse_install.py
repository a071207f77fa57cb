"""``python scripts/wheelhouse.py install`` (`make gpu-check` / `make install-offline`, on the node, no network;
scripts/wheelhouse.py's doc says what it does): the venv over the Python that has torch, and pip's install from the
wheelhouse alone. Standard library only (and its sibling scripts/wheelhouse_build.py, which imports nothing else):
it runs on the node's bare Python before the venv exists."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from wheelhouse_build import MANIFEST, REPO

#: the venv's file that makes it see the base interpreter's packages
BASE_PTH = "_attnbench_base.pth"

#: run by the base interpreter: its version, its site folders and its torch
PROBE = r"""
import json, os, sys, sysconfig
paths = sysconfig.get_paths()
stdlib = {os.path.realpath(paths["stdlib"]), os.path.realpath(paths["platstdlib"])}
sites = []  # every folder on sys.path but the standard library's and the current one, in order
for p in sys.path[1:]:
    real = os.path.realpath(p)
    dynload = os.path.basename(real) == "lib-dynload" and os.path.dirname(real) in stdlib
    if os.path.isdir(p) and real not in stdlib and not dynload and real != os.getcwd() and real not in sites:
        sites.append(real)
try:
    import torch
    torch_info = {"version": torch.__version__, "file": torch.__file__, "cuda": torch.version.cuda}
except Exception as exc:  # any failure to import torch is reported as such by the caller
    torch_info = {"error": f"{type(exc).__name__}: {exc}"}
print(json.dumps({"python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable,
                  "sites": sites,
                  "torch": torch_info}))
"""


def clean_pip_env() -> dict[str, str]:
    """The environment for an offline pip: no PIP_* variable and no pip configuration file (a machine's find-links,
    extra index or constraints must not reach an install that is meant to use the wheelhouse alone)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def probe(python: str) -> dict:
    """The interpreter's version, its site folders and its torch."""
    try:
        done = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, cwd=tempfile.gettempdir())
    except FileNotFoundError:
        raise SystemExit(f"install: no interpreter {python!r} (--base-python / TORCH_PYTHON: the Python that has "
                         "torch)") from None
    if done.returncode != 0:
        raise SystemExit(f"install: {python} failed to start:\n{done.stderr}")
    return json.loads(done.stdout)


def install(wheelhouse: Path, venv: Path, base_python: str, extras: list[str], repo: Path = REPO) -> dict:
    """The offline install (see scripts/wheelhouse.py's doc); returns what it wrote to <venv>/.install.json."""
    started = time.perf_counter()
    manifest_path = wheelhouse / MANIFEST
    if not manifest_path.is_file():
        raise SystemExit(f"install: {manifest_path} not found: make the wheelhouse first, on a machine with network "
                         "(`make wheelhouse`), and bring the folder here")
    manifest = json.loads(manifest_path.read_text())
    base = probe(base_python)
    if "error" in base["torch"]:
        raise SystemExit(f"install: {base['executable']} cannot import torch ({base['torch']['error']}); the offline "
                         "install goes over the Python that has the node's torch: TORCH_PYTHON=/path/to/python3")
    short = ".".join(base["python"].split(".")[:2])
    if short != manifest["python_version"]:
        raise SystemExit(f"install: {wheelhouse} is for Python {manifest['python_version']}, {base['executable']} is "
                         f"{base['python']}: make the wheelhouse for it (`make wheelhouse WHEEL_PYTHON={short}`)")
    py = venv / "bin" / "python"
    if py.exists() and not list(venv.glob(f"lib/python*/site-packages/{BASE_PTH}")):
        raise SystemExit(f"install: {venv} exists and was not made over a node's Python by this install; remove it "
                         "or name another (VENV=...)")
    pip_cmd = [str(py), "-m", "pip"]
    if not py.exists():
        made = subprocess.run([base["executable"], "-m", "venv", str(venv)], capture_output=True, text=True)
        if made.returncode != 0:  # no ensurepip (Debian without python3-venv): a bare venv, the base's pip drives it
            subprocess.run([base["executable"], "-m", "venv", "--without-pip", str(venv)], check=True)
            pip_cmd = [base["executable"], "-m", "pip", "--python", str(py)]
        site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        lines = [f"import site; site.addsitedir({p!r})" for p in base["sites"]]
        Path(site, BASE_PTH).write_text("\n".join(lines) + "\n")
    elif subprocess.run([*pip_cmd, "--version"], capture_output=True).returncode != 0:
        pip_cmd = [base["executable"], "-m", "pip", "--python", str(py)]
    target = f"{repo}[{','.join(extras)}]" if extras else str(repo)
    cmd = [*pip_cmd, "install", "--no-index", "--find-links", str(wheelhouse.resolve()),
           "--disable-pip-version-check", "--quiet", "-e", target]
    pip_started = time.perf_counter()
    done = subprocess.run(cmd, env=clean_pip_env())
    pip_s = time.perf_counter() - pip_started
    if done.returncode != 0:
        needs = ", ".join(f"{n}{e['specifier']}" for n, e in manifest["from_node"].items())
        raise SystemExit(f"install: pip failed (above). The wheelhouse expects the node to have: {needs}. A package "
                         "the node lacks, or has at a version outside these, goes into the wheelhouse when its "
                         "`make wheelhouse NODE_HAS=...` file is the node's `pip freeze` (with versions)")
    check = subprocess.run([str(py), "-c", "import json, torch, attnbench.harness; print(json.dumps("
                            "{'torch': torch.__version__, 'file': torch.__file__}))"],
                           capture_output=True, text=True, cwd=tempfile.gettempdir())
    if check.returncode != 0:
        raise SystemExit(f"install: the new venv cannot import torch and attnbench:\n{check.stderr}")
    seen = json.loads(check.stdout)
    if Path(seen["file"]).resolve() != Path(base["torch"]["file"]).resolve():
        raise SystemExit(f"install: the venv imports torch {seen['torch']} from {seen['file']}, not the node's "
                         f"{base['torch']['version']} ({base['torch']['file']})")
    record = {"mode": "offline", "wheelhouse": str(wheelhouse), "wheels": len(manifest["wheels"]),
              "wheelhouse_mib": manifest["size_mib"], "base_python": base["executable"], "python": base["python"],
              "torch": base["torch"]["version"], "torch_cuda": base["torch"]["cuda"], "torch_file": seen["file"],
              "pip_install_s": round(pip_s, 1), "install_s": round(time.perf_counter() - started, 1)}
    (venv / ".install.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"install: {record['install_s']:.1f} s, no network (pip {record['pip_install_s']:.1f} s, --no-index from "
          f"{wheelhouse}/: {record['wheels']} wheels, {record['wheelhouse_mib']:.1f} MiB) into {venv}, over torch "
          f"{record['torch']} (CUDA {record['torch_cuda']}) of {record['base_python']}")
    return record
