"""What machine and code produced a number: captured into every run record."""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import psutil
import torch

from attnbench.harness.measure.gpu_lease import current

PACKAGES = ("attnbench", "torch", "numpy", "pandas", "snakemake", "datasets", "scikit-learn", "xformers")


#: this file: the code whose version a record names
_CODE = Path(__file__).resolve()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_CODE.parent), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict:
    """The commit of the checkout the running code comes from, and whether its tracked files differ
    from it; None for both when the code is not a tracked file of a git work tree (a normal
    install in site-packages: ``packages.attnbench`` names its version then)."""
    tracked = _git("ls-files", "--error-unmatch", _CODE.name) is not None
    commit = _git("rev-parse", "HEAD") if tracked else None
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def distribution_version(dist: str) -> str | None:
    """The installed version of a pip distribution; None when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str | None]:
    return {name: distribution_version(name) for name in PACKAGES}


def cuda_facts(device: torch.device) -> dict:
    """What a GPU number depends on beyond the device name: its memory, compute capability and
    UUID (which physical card), the cuDNN version, and whether TF32 is on for matmuls and cuDNN."""
    props = torch.cuda.get_device_properties(device)
    uuid = getattr(props, "uuid", None)
    return {
        "device_memory_bytes": props.total_memory,
        "compute_capability": f"{props.major}.{props.minor}",
        "gpu_uuid": f"GPU-{uuid}" if uuid is not None else None,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }


#: the environment variable naming the pipeline invocation a job belongs to: the snakemake that planned it sets it
#: (rules/common.smk) and its jobs inherit it, so a record says which invocation measured it (None: a run by hand)
INVOCATION_VAR = "ATTNBENCH_INVOCATION"


def invocation_id() -> str:
    """A new invocation's id: its UTC start time, host and process id."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{platform.node()}-{os.getpid()}"


def capture(device: torch.device) -> dict:
    env = {
        "invocation": os.environ.get(INVOCATION_VAR),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "device_memory_bytes": None,
        "driver": None,
        "git": git_state(),
        "packages": package_versions(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        env.update(cuda_facts(device))
        env["driver"] = _gpu_driver()
        env["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        env["gpu_lease"] = current()  # which workstation GPU this job leased (None: no lease, e.g. SLURM)
    return env


def bench_machine(device: str, threads: int) -> dict:
    """The machine facts the efficiency sweep's JSON carries (pytest-benchmark's machine_info)."""
    env = capture(torch.device("cuda", 0) if device == "cuda" else torch.device("cpu"))
    env["torch_threads"] = threads
    env["memory_bytes"] = psutil.virtual_memory().total
    if device == "cuda":
        env["sdpa_enabled"] = {"flash": torch.backends.cuda.flash_sdp_enabled(),
                               "efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                               "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                               "math": torch.backends.cuda.math_sdp_enabled()}
    return env
