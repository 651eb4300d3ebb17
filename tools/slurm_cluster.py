#!/usr/bin/env python3
"""Bring a one-node Slurm cluster up on this machine (in a temp folder) and tear it down again.

Used by ``nox -s slurm`` and by hand to try ``afbench run EXPERIMENT --executor slurm`` without a
real cluster. Needs root and Debian's ``slurm-wlm`` + ``munge`` (``--install`` apt-gets them).

    python tools/slurm_cluster.py up --dir /tmp/afbench-slurm [--install]   # prints 'export SLURM_CONF=...'
    python tools/slurm_cluster.py down --dir /tmp/afbench-slurm

Everything slurmctld/slurmd write (state, spool, logs, pid files) lives under ``--dir``; the cluster
is found through ``SLURM_CONF=<dir>/slurm.conf``, so the machine's /etc/slurm is never touched.
munged runs as the ``munge`` user with the system key (created if missing); ``down`` stops it only
if ``up`` started it. Two partitions hold this
host with all its CPUs and 90% of its memory: ``debug`` (default, no time limit) and ``short`` (30 min,
to test time-limit checks); there are no GPUs (no GRES).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["slurm-wlm", "munge"]
MUNGE_KEY = Path("/etc/munge/munge.key")


def sh(*cmd: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, env=env)


def install() -> None:
    """apt-get the Debian packages unless slurmctld, slurmd and munged are already there."""
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch")):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], check=True, env=env)


def start_munge() -> bool:
    """munged as the munge user, with its run/log folders owned by munge; False if it was running."""
    if sh("munge", "-n", check=False).returncode == 0:
        return False
    for d in (Path("/run/munge"), Path("/var/log/munge"), Path("/var/lib/munge"), Path("/etc/munge")):
        d.mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    if not MUNGE_KEY.exists():
        if shutil.which("mungekey"):
            sh("mungekey", "--create", "--keyfile", str(MUNGE_KEY))
        else:
            MUNGE_KEY.write_bytes(os.urandom(1024))
    shutil.chown(MUNGE_KEY, "munge", "munge")
    MUNGE_KEY.chmod(0o400)
    # runuser keeps us independent of sudo; munged daemonizes itself
    sh("runuser", "-u", "munge", "--", "munged")
    for _ in range(50):
        if sh("munge", "-n", check=False).returncode == 0:
            return True
        time.sleep(0.1)
    raise SystemExit("munged did not come up (see /var/log/munge/munged.log)")


def real_memory_mb() -> int:
    with open("/proc/meminfo") as fh:
        kb = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal"))
    return int(kb / 1024 * 0.9)


def write_conf(d: Path, cpus: int) -> Path:
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    conf = d / "slurm.conf"
    conf.write_text(f"""# one-node test cluster written by tools/slurm_cluster.py
ClusterName=afbench
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=2048
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=300
KillWait=5
NodeName={host} CPUs={cpus} RealMemory={real_memory_mb()} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes={host} MaxTime=30 State=UP
""")
    return conf


def up(d: Path, cpus: int) -> None:
    d = d.resolve()
    d.mkdir(parents=True, exist_ok=True)
    if start_munge():
        (d / "munged.started").write_text("munged was started by tools/slurm_cluster.py up; down stops it\n")
    conf = write_conf(d, cpus)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    # -c: clear state of an earlier cluster in this folder; both daemonize and write pid files
    sh("slurmctld", "-c", "-f", str(conf), env=env)
    sh("slurmd", "-f", str(conf), env=env)
    for _ in range(120):
        out = sh("sinfo", "-h", "-o", "%t", env=env, check=False).stdout.split()
        if out and all(s.rstrip("*") in ("idle", "mix", "alloc") for s in out):
            print(f"export SLURM_CONF={conf}")
            return
        time.sleep(0.5)
    raise SystemExit(f"the node did not become idle; see {d}/slurmctld.log and {d}/slurmd.log")


def down(d: Path) -> None:
    d = d.resolve()
    conf = d / "slurm.conf"
    if conf.exists():
        sh("scancel", "--full", "--user", "root", env={**os.environ, "SLURM_CONF": str(conf)}, check=False)
    for name in ("slurmd", "slurmctld"):
        pid_file = d / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text().split()[0])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    munged = Path("/run/munge/munged.pid")
    if (d / "munged.started").exists() and munged.exists():
        try:
            os.kill(int(munged.read_text().split()[0]), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass
    print(f"cluster in {d} stopped")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("--dir", required=True, help="folder for slurm.conf, state, spool and logs")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    p.add_argument("--install", action="store_true", help="apt-get slurm-wlm and munge when missing")
    a = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: slurmd, slurmctld and munged are started here")
    if a.action == "up":
        if a.install:
            install()
        up(Path(a.dir), a.cpus)
    else:
        down(Path(a.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
