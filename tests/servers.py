"""Private broker servers for the restart tests: started on a free port with their own store,
killed by pid (never the shared servers other tests use)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


class PrivateServer:
    """A server process on ``port`` keeping its data in ``directory`` across restarts."""

    url = ""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.command()[0]} did not start on port {self.port}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to shut down cleanly."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class RedisServer(PrivateServer):
    """``redis-server`` with an append-only file, so a restart keeps the streams."""

    def __init__(self, port: int, directory: Path) -> None:
        super().__init__(port, directory)
        self.url = f"redis://127.0.0.1:{port}/0"

    def command(self) -> list[str]:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"]
        return [binary, "--port", str(self.port), *options, "--dir", str(self.dir)]

    def _answers(self) -> bool:
        # Ours, not whatever took the port while the server was down (it then fails to bind).
        probe = subprocess.run(
            ["redis-cli", "-p", str(self.port), "info", "server"], capture_output=True, text=True
        )
        assert self.proc is not None
        return f"process_id:{self.proc.pid}" in probe.stdout


class NatsServer(PrivateServer):
    """``nats-server -js`` with a file store, so a restart keeps the streams and consumers."""

    def __init__(self, port: int, directory: Path) -> None:
        super().__init__(port, directory)
        self.url = f"nats://127.0.0.1:{port}"

    def command(self) -> list[str]:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        return [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.dir)]
