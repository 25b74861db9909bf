"""A throwaway SLURM cluster on this machine for tests: munge, slurmctld and two slurmd daemons
(node1, node2 on 127.0.0.1), all state under one directory, stopped by PID at the end.

Debian's packages (slurmctld, slurmd, slurm-client, munge) are installed with apt when missing;
that needs root, as do slurmd's node names. The config lives in `<root>/slurm.conf` and is
selected with SLURM_CONF, so a machine's own /etc/slurm is never read or written.
Settings that keep tests fast (see docs/slurm.md): a requeued job may restart after ~12 s
(AuthInfo=cred_expire=10) and the scheduler looks at pending jobs every 2 s.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
NODES = ("node1", "node2")


class SlurmUnavailable(RuntimeError):
    """The daemons cannot run here; the message says what was tried."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _missing_packages() -> list[str]:
    return [p for p in PACKAGES if _run(["dpkg-query", "-W", "-f=${Status}", p]).stdout
            != "install ok installed"]


def install_packages() -> None:
    if shutil.which("dpkg-query") is None:
        raise SlurmUnavailable("not a Debian/Ubuntu machine (no dpkg-query): install slurmctld, slurmd, "
                               "slurm-client and munge by hand")
    missing = _missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"packages {' '.join(missing)} are missing and installing them needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [["apt-get", "update", "-q"],
             ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]]
    for cmd in steps:
        proc = _run(cmd, timeout=600, env=env)
        if proc.returncode != 0:
            tail = " ".join((proc.stderr or proc.stdout).split()[-30:])
            raise SlurmUnavailable(f"`{' '.join(cmd)}` failed ({proc.returncode}): {tail}")


def _wait_for(predicate, timeout_s: float, what: str, log_dir: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    logs = ""
    if log_dir is not None:
        logs = " | ".join(f"{p.name}: {' '.join(p.read_text().split()[-40:])}"
                          for p in sorted(log_dir.glob("*.log")))
    raise SlurmUnavailable(f"{what} not ready after {timeout_s:.0f}s {logs}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_pid(pid: int, timeout_s: float = 15) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.1)
        if not _pid_alive(pid):
            return


class SlurmCluster:
    """Example:
        >>> cluster = SlurmCluster(tmp_dir); cluster.start()   # sets SLURM_CONF for subprocesses
        >>> subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env)
        >>> cluster.stop()
    """

    def __init__(self, root: Path, cpus_per_node: int = 2, mem_per_node_mb: int = 8000):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.cpus_per_node = cpus_per_node
        self.mem_per_node_mb = mem_per_node_mb
        self._munged_pid: int | None = None

    def start(self) -> None:
        if os.geteuid() != 0:
            raise SlurmUnavailable("slurmd needs root to run two node names on one machine; "
                                   "run the tests as root (CI does)")
        install_packages()
        for sub in ("state", "log", *(f"spool/{n}" for n in NODES)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._start_munge()
        self._write_config()
        self._daemon(["/usr/sbin/slurmctld", "-f", str(self.conf)])
        for node in NODES:
            self._daemon(["/usr/sbin/slurmd", "-f", str(self.conf), "-N", node])
        _wait_for(lambda: self.sinfo() == f"{len(NODES)} idle", 60, "slurm nodes", self.root / "log")

    def sinfo(self) -> str:
        proc = _run(["sinfo", "-h", "-o", "%D %T"], env=self.env, timeout=10)
        return proc.stdout.strip()

    def stop(self) -> None:
        """Cancel what is still queued, shut the daemons down, and wait for their PIDs."""
        pids = [int(p.read_text()) for p in self.root.glob("*.pid") if p.read_text().strip()]
        if self.conf.exists():
            _run(["scancel", "--full", "--quiet", f"--user={os.geteuid()}"], env=self.env, timeout=20)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self._queued():
                time.sleep(0.5)
            _run(["scontrol", "shutdown"], env=self.env, timeout=20)
        for pid in pids:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _pid_alive(pid):
                time.sleep(0.1)
            _stop_pid(pid)
        if self._munged_pid is not None:
            _stop_pid(self._munged_pid)

    # ------------------------------------------------------------------ helpers

    def _queued(self) -> bool:
        return bool(_run(["squeue", "-h"], env=self.env, timeout=10).stdout.strip())

    def _start_munge(self) -> None:
        if self._munge_works():
            return
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            proc = _run(["runuser", "-u", "munge", "--", "/usr/sbin/mungekey", "--create"])
            if proc.returncode != 0:
                raise SlurmUnavailable(f"mungekey --create failed: {proc.stderr.strip()}")
        proc = _run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"])
        if proc.returncode != 0:
            raise SlurmUnavailable(f"munged did not start: {proc.stderr.strip()}")
        _wait_for(self._munge_works, 20, "munged")
        pid_file = Path("/run/munge/munged.pid")
        self._munged_pid = int(pid_file.read_text()) if pid_file.exists() else None

    @staticmethod
    def _munge_works() -> bool:
        if shutil.which("munge") is None:
            return False
        encoded = _run(["munge", "-n"], timeout=10)
        if encoded.returncode != 0:
            return False
        return subprocess.run(["unmunge"], input=encoded.stdout, capture_output=True, text=True,
                              timeout=10).returncode == 0

    def _daemon(self, cmd: list[str]) -> None:
        proc = _run(cmd, env=self.env, timeout=30)  # they daemonize; the PID goes to their PID file
        if proc.returncode != 0:
            raise SlurmUnavailable(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()}")

    def _write_config(self) -> None:
        r = self.root
        lines = [
            "ClusterName=metastate-test",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge",
            # also how long a requeued job waits before it may start again (default 120 s)
            "AuthInfo=cred_expire=10",
            "MpiDefault=none", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "SchedulerType=sched/backfill", "SchedulerParameters=sched_interval=2,bf_interval=2",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
            # CPUs and memory may exceed the real machine's
            "SlurmdParameters=config_overrides",
            f"StateSaveLocation={r / 'state'}", f"SlurmdSpoolDir={r / 'spool'}/%n",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}", f"SlurmdPidFile={r}/slurmd-%n.pid",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={r / 'log'}/slurmd-%n.log",
            "ReturnToService=2", "MinJobAge=600", "KillWait=5", "InactiveLimit=0",
        ]
        for node in NODES:
            lines.append(f"NodeName={node} NodeHostname=localhost NodeAddr=127.0.0.1 Port={_free_port()} "
                         f"CPUs={self.cpus_per_node} RealMemory={self.mem_per_node_mb} State=UNKNOWN")
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=1000")
        self.conf.write_text("\n".join(lines) + "\n")
