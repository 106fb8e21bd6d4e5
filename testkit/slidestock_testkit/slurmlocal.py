"""A real one-node SLURM cluster on loopback, for the cluster profile's tests and demo.

Debian's slurm-wlm and munge (``resources/slurm/install.sh`` installs them,
as root): ``munged`` as the munge user with its own key and socket, then
``slurmctld`` and ``slurmd`` as root, each in the foreground of its own
process, all state in one folder. Clients find the cluster through
``SLURM_CONF``; stopping kills each daemon by its PID.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slidestock.errors import SlidestockError
from slidestock_testkit.s3server import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")


@dataclass(frozen=True)
class SlurmCluster:
    """A running cluster: its folder, config file, node name and daemon processes."""

    root: Path
    conf: Path
    munge_dir: Path
    node: str
    cpus: int
    memory_mb: int
    procs: tuple[subprocess.Popen[Any], ...] = field(repr=False)

    @property
    def env(self) -> dict[str, str]:
        """The environment a client (sbatch, squeue, snakemake) needs to reach this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    @property
    def jobcomp(self) -> Path:
        """One line per finished job (jobcomp/filetxt): id, state, time limit, CPUs, memory, ..."""
        return self.root / "jobcomp.txt"


# Where SLURM clients look for slurm.conf when SLURM_CONF is unset and the
# system has none: slurmd's config cache. Snakemake's jobstep clears SLURM_CONF
# before it calls srun inside a job, so the cluster's file is linked here.
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
CLIENT_CONF = Path("/run/slurm/conf/slurm.conf")


def missing_requirements() -> str:
    """Why a cluster cannot be started here, or "" when it can."""
    if os.geteuid() != 0:
        return "starting slurmctld, slurmd and munged needs root"
    if SYSTEM_CONF.exists():
        return f"{SYSTEM_CONF} exists: jobs would talk to that cluster, not a local test one"
    if CLIENT_CONF.exists() and not CLIENT_CONF.is_symlink():
        return f"{CLIENT_CONF} exists: a configless slurmd runs here"
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (run resources/slurm/install.sh as root)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no munge user (the munge package creates it)"
    return ""


def slurm_conf(root: Path, munge_socket: Path, node: str, cpus: int, memory_mb: int, ports: tuple[int, int]) -> str:
    """slurm.conf of a one-node cluster whose state, logs and sockets all live under ``root``."""
    return f"""\
ClusterName=slidestock
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
# Memory is enforced by polling each job's RSS every second: a job over its --mem is killed.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
# Finished jobs stay visible to squeue (the profile's status command) for 10 minutes.
MinJobAge=600
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=main Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _munge_dir() -> Path:
    """The munge user's own folder with a fresh key, in /tmp: munged checks every folder on the
    way to its socket, which the test's own (root-only) folders would fail."""
    munge = pwd.getpwnam("munge")
    folder = Path(tempfile.mkdtemp(prefix="slidestock-munge-", dir="/tmp"))
    folder.chmod(0o711)  # clients need to reach the socket
    key = folder / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    for path in (folder, key):
        os.chown(path, munge.pw_uid, munge.pw_gid)
    return folder


def _wait(
    what: str, ready: Callable[[], bool], procs: list[subprocess.Popen[Any]], log: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            argv = dead[0].args
            name = Path(str(argv[0] if isinstance(argv, list) else argv)).name
            raise SlidestockError(f"slurm: {name} exited {dead[0].returncode}; see {log}")
        if ready():
            return
        time.sleep(0.2)
    raise SlidestockError(f"slurm: {what} not ready after {timeout_s:.0f} s; see {log}")


def start(root: Path, timeout_s: float = 60.0) -> SlurmCluster:
    """Start munged, slurmctld and slurmd with their state in ``root``; wait until the node is idle."""
    why = missing_requirements()
    if why:
        raise SlidestockError(f"slurm: cannot start a local cluster: {why}")
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    munge_dir = _munge_dir()
    node = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20) - 1024
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, munge_dir / "munge.socket", node, cpus, memory_mb, (free_port(), free_port())))
    CLIENT_CONF.parent.mkdir(parents=True, exist_ok=True)
    CLIENT_CONF.unlink(missing_ok=True)
    CLIENT_CONF.symlink_to(conf)
    munge = pwd.getpwnam("munge")
    procs: list[subprocess.Popen[Any]] = []
    munge_out = (root / "munged.out").open("w")
    try:
        procs.append(
            subprocess.Popen(
                ["munged", "--foreground", f"--socket={munge_dir}/munge.socket", f"--key-file={munge_dir}/munge.key",
                 f"--pid-file={munge_dir}/munged.pid", f"--log-file={munge_dir}/munged.log",
                 f"--seed-file={munge_dir}/munged.seed"],
                user=munge.pw_uid, group=munge.pw_gid, extra_groups=[], start_new_session=True,
                stdout=munge_out, stderr=munge_out,
            )
        )  # fmt: skip
        _wait("munged", (munge_dir / "munge.socket").exists, procs, root / "munged.out", timeout_s)
        env = {**os.environ, "SLURM_CONF": str(conf)}
        for daemon in ("slurmctld", "slurmd"):
            log = (root / f"{daemon}.out").open("w")
            argv = [daemon, "-D", "-f", str(conf)] + (["-i"] if daemon == "slurmctld" else [])
            procs.append(subprocess.Popen(argv, env=env, start_new_session=True, stdout=log, stderr=log))

        def idle() -> bool:
            proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=env, capture_output=True, text=True)
            return proc.returncode == 0 and proc.stdout.strip() == "idle"

        _wait("the node", idle, procs, root / "slurmctld.log", timeout_s)
    except BaseException:
        for proc in reversed(procs):
            _kill(proc)
        _unlink_client_conf(conf)
        shutil.rmtree(munge_dir, ignore_errors=True)
        raise
    return SlurmCluster(root, conf, munge_dir, node, cpus, memory_mb, tuple(procs))


def _kill(proc: subprocess.Popen[Any], timeout_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop(cluster: SlurmCluster) -> None:
    """Cancel what is left, then stop slurmd, slurmctld and munged, each by its PID."""
    subprocess.run(["scancel", "--full", "--user", "root"], env=cluster.env, capture_output=True, check=False)
    for proc in reversed(cluster.procs):
        _kill(proc)
    shutil.rmtree(cluster.munge_dir, ignore_errors=True)
    _unlink_client_conf(cluster.conf)


def _unlink_client_conf(conf: Path) -> None:
    if CLIENT_CONF.is_symlink() and CLIENT_CONF.readlink() == conf:
        CLIENT_CONF.unlink()


@contextmanager
def running(root: Path) -> Iterator[SlurmCluster]:
    cluster = start(root)
    try:
        yield cluster
    finally:
        stop(cluster)
