"""A throw-away single-node SLURM cluster for tests (tests/project/test_slurm.py).

``install_reason()`` installs slurm-wlm and munge with apt-get when ``sbatch`` is missing and says why
it cannot when that fails; ``LocalSlurm`` writes /etc/slurm/slurm.conf (backing up and restoring any
existing file), starts munged, slurmctld and slurmd in the foreground as child processes and stops
them by their PIDs. The recipe and its pitfalls: /work/shared/notes/environment-facts.md, section 4
(the config must be at the default path: the jobstep plugin drops SLURM_CONF inside the job's srun).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MUNGE_PIDFILE = Path("/run/munge/munged.pid")
PACKAGES = ["slurm-wlm", "munge"]

CONF = """\
ClusterName=attnbench-test
SlurmctldHost=localhost
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pidfile
SlurmdPidFile={d}/slurmd.pidfile
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
NodeName=localhost NodeHostname=localhost CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def install_reason(timeout: float = 120) -> str | None:
    """None when sbatch, slurmctld, slurmd and munged are there (installing them with apt-get if
    they are not), else why they are not: the reason to skip with."""
    needed = ["sbatch", "squeue", "sinfo", "slurmctld", "slurmd"]

    def missing() -> list[str]:
        tools = [t for t in needed if not (shutil.which(t) or Path("/usr/sbin", t).exists())]
        return tools + ([] if Path("/usr/sbin/munged").exists() else ["munged"])

    if not missing():
        return None
    if os.geteuid() != 0:
        return f"SLURM is not installed ({', '.join(missing())} missing) and installing it needs root"
    if not shutil.which("apt-get"):
        return f"SLURM is not installed ({', '.join(missing())} missing) and there is no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(cmd)}` did not finish within {timeout:.0f} s"
        if proc.returncode != 0:
            return f"`{' '.join(cmd)}` failed (rc {proc.returncode}): {(proc.stdout + proc.stderr)[-1500:]}"
    if missing():
        return f"after installing {PACKAGES} these are still missing: {', '.join(missing())}"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalSlurm:
    """munged + slurmctld + slurmd on this machine, one partition `debug` with all its cores and
    its memory less 2 GB. ``start()`` raises ``RuntimeError`` with the daemons' logs when the node
    does not come up; ``stop()`` is safe to call at any point (also after a failed start)."""

    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.log = self.dir / "log"
        self.procs: dict[str, subprocess.Popen] = {}
        self.munged_pid: int | None = None  # the munged this object started (not its runuser parent)
        self.conf_backup: Path | None = None
        self.conf_written = False

    # -- start -------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        for sub in ("state", "spool", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        ping = _run(["scontrol", "ping"], 10) if SLURM_CONF.exists() else None
        if ping is not None and ping.returncode == 0 and "UP" in ping.stdout:
            raise RuntimeError("a SLURM controller already answers on this machine; not replacing its config")
        self._write_conf()
        self._start_munge()
        self._spawn("slurmctld", ["/usr/sbin/slurmctld", "-D", "-i"])
        self._spawn("slurmd", ["/usr/sbin/slurmd", "-D", "-N", "localhost"])
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with rc {proc.returncode}\n{self.logs()}")
            out = _run(["sinfo", "-h", "-o", "%T"], 10)
            state = out.stdout.strip()
            if out.returncode == 0 and state.startswith(("idle", "mixed", "allocated")):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the SLURM node did not become idle within {timeout:.0f} s (sinfo: {state!r})\n"
                           f"{self.logs()}")

    def _write_conf(self) -> None:
        mem_total = next(int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemTotal:"))
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        if SLURM_CONF.exists() and self.conf_backup is None:
            self.conf_backup = self.dir / "slurm.conf.orig"
            shutil.copy2(SLURM_CONF, self.conf_backup)
        self.conf_written = True
        SLURM_CONF.write_text(CONF.format(d=self.dir, cpus=os.cpu_count() or 1, mem_mb=max(mem_total - 2048, 1024)))

    def _start_munge(self) -> None:
        """Start munged unless one already runs (then it is left alone, and not stopped either)."""
        if MUNGE_PIDFILE.exists():
            try:
                if _alive(int(MUNGE_PIDFILE.read_text().split()[0])):
                    return
            except (ValueError, IndexError):
                pass
        if not Path("/etc/munge/munge.key").exists():
            proc = _run(["/usr/sbin/mungekey", "--create"], 30) if Path("/usr/sbin/mungekey").exists() else None
            if proc is None or proc.returncode != 0:
                raise RuntimeError("no /etc/munge/munge.key and it could not be created")
            shutil.chown("/etc/munge/munge.key", "munge", "munge")
        MUNGE_PIDFILE.parent.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_PIDFILE.parent, "munge", "munge")
        MUNGE_PIDFILE.unlink(missing_ok=True)
        self._spawn("munged", ["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--foreground"])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if MUNGE_PIDFILE.exists() and MUNGE_PIDFILE.read_text().strip():
                self.munged_pid = int(MUNGE_PIDFILE.read_text().split()[0])
                return
            if self.procs["munged"].poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"munged did not start\n{self.logs()}")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.log / f"{name}.out", "w")
        try:
            self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            out.close()

    # -- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop slurmd, slurmctld and the munged started here, by PID (SIGTERM, then SIGKILL after
        10 s), and put the original slurm.conf back (or remove the one written here)."""
        try:
            for name in ("slurmd", "slurmctld"):
                if name in self.procs:
                    self._terminate(self.procs[name].pid, self.procs[name])
            if self.munged_pid is not None:
                self._terminate(self.munged_pid, None)
            if "munged" in self.procs:  # the runuser parent ends with its child
                self._terminate(self.procs["munged"].pid, self.procs["munged"])
        finally:
            if self.conf_written:
                if self.conf_backup is not None:
                    shutil.copy2(self.conf_backup, SLURM_CONF)
                else:
                    SLURM_CONF.unlink(missing_ok=True)
                self.conf_written = False

    @staticmethod
    def _terminate(pid: int, proc: subprocess.Popen | None) -> None:
        if proc is not None and proc.poll() is not None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc is not None:
                if proc.poll() is not None:
                    return
            elif not _alive(pid):
                return
            time.sleep(0.1)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if proc is not None:
            proc.wait(timeout=10)

    def running(self) -> list[str]:
        """Names of the daemons started here that are still alive."""
        alive = [n for n, p in self.procs.items() if n != "munged" and p.poll() is None]
        if self.munged_pid is not None and _alive(self.munged_pid):
            alive.append("munged")
        return alive

    def logs(self, tail: int = 2000) -> str:
        parts = []
        for path in sorted(self.log.glob("*")):
            text = path.read_text(errors="replace")
            parts.append(f"--- {path.name}\n{text[-tail:]}")
        return "\n".join(parts)

    def submissions(self) -> list[str]:
        """The SLURM job ids that slurmctld accepted from sbatch, from its log."""
        import re

        path = self.log / "slurmctld.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", text)
