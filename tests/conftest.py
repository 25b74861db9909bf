"""Fixtures shared across packages: services that tests start on 127.0.0.1 and stop by PID."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

# Without CUDA, fla's Triton kernels run under Triton's interpreter (tests marked `interpret`,
# see ops/rwkv7/triton_interpreter.py). triton.jit reads this when fla's kernels are defined, so
# it is set before any test module imports fla; with CUDA the real kernels run (marker `gpu`).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def sigkill_after_step(args: list[str], step: int, cwd: Path) -> None:
    """Run `metastate ARGS` and SIGKILL it as soon as it reports `step` (a kill between steps, or
    while it saves); asserts that the kill, not an error, ended it."""
    proc = subprocess.Popen([sys.executable, "-m", "launch.cli", *args], cwd=cwd,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith(f"step {step}/"):
            proc.kill()
            break
    proc.stdout.close()
    assert proc.wait(timeout=300) == -signal.SIGKILL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` (sqlite store) on a free loopback port, started on demand."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180) -> None:
        if self.proc is not None:
            return
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        self.log = open(self.root / "server.log", "wb")
        self.proc = subprocess.Popen(
            [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"mlflow server not healthy after {timeout_s}s on {self.uri}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A not-yet-started MLflow server on a reserved port: call `.start()` (idempotent)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()
