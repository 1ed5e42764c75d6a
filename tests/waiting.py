"""Bounded waits for tests whose outcome arrives from another task, process or server.

A test that waits on a child process uses :class:`Child`: every wait names the step it waits
for and, when it fails, says what the child printed (stdout and stderr) and whether it exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx


async def eventually(
    check: Callable[[], bool],
    timeout: float = 5.0,
    *,
    step: str = "the condition",
    children: Iterable[Child] = (),
) -> None:
    """Wait until ``check()``; the failure names ``step`` and shows ``children``'s output."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(_not_met(step, timeout, children))
        await asyncio.sleep(0.01)


async def until(
    check: Callable[[], Awaitable[Any]],
    timeout: float = 5.0,
    *,
    step: str = "the condition",
    children: Iterable[Child] = (),
) -> None:
    """Like :func:`eventually`, for conditions that need a round trip to the server."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(_not_met(step, timeout, children))
        await asyncio.sleep(0.02)


def _not_met(step: str, timeout: float, children: Iterable[Child]) -> str:
    return "\n".join([f"{step}: not met after {timeout:.0f}s", *map(str, children)])


#: How long a child gets for one step. Generous: CI runs three suites at once on two cores,
#: and a healthy step takes well under a second; only a hang should ever reach it.
STEP_TIMEOUT = 60.0


class Child:
    """A child process of a test, stopped by its pid, its output read line by line.

    Stdout is read by a thread (waiting never blocks the event loop, and a chatty child never
    fills the pipe); stderr goes to a file, for the failure messages. Closing stdin is the
    workers' cue to stop cleanly.
    """

    def __init__(
        self,
        *command: str,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        self.command = command
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - open while the child runs
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=None if env is None else dict(env),
            cwd=cwd,
        )
        self.lines: list[str] = []
        self._seen = 0  # lines already returned by expect()
        self._ended = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for raw in self.proc.stdout:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
        self._ended.set()

    async def expect(
        self,
        step: str,
        match: str | Callable[[str], bool] = "",
        timeout: float = STEP_TIMEOUT,
    ) -> str:
        """The next line that starts with ``match`` (or satisfies it), after the lines an
        earlier ``expect`` returned; ``step`` says what it means, for the failure message."""
        test = match if callable(match) else (lambda line: line.startswith(match))
        deadline = time.monotonic() + timeout
        while True:
            ended = self._ended.is_set()
            for index in range(self._seen, len(self.lines)):
                if test(self.lines[index]):
                    self._seen = index + 1
                    return self.lines[index]
            if ended:
                raise AssertionError(f"{step}: the child closed its stdout first; {self}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{step}: nothing after {timeout:.0f}s; {self}")
            await asyncio.sleep(0.01)

    async def serving(
        self, url: str, step: str = "the server answering", timeout: float = STEP_TIMEOUT
    ) -> None:
        """Wait until ``url`` answers an HTTP GET (whatever the status)."""
        deadline = time.monotonic() + timeout
        # Refused connections are retried at once; a loaded server gets 20 s to answer (a 1 s
        # read timeout, retried, can miss a server that is up but slow forever).
        async with httpx.AsyncClient(timeout=httpx.Timeout(20.0, connect=2.0)) as client:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"{step}: the child exited first; {self}")
                try:
                    await client.get(url)
                    return
                except httpx.TransportError as exc:
                    if time.monotonic() > deadline:
                        message = f"{step}: nothing after {timeout:.0f}s ({exc!r}); {self}"
                        raise AssertionError(message) from None
                await asyncio.sleep(0.05)

    async def exited(self, step: str, timeout: float = STEP_TIMEOUT) -> int:
        """Wait for the child to exit; its exit status. Fails (and kills it) after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                message = f"{step}: still running after {timeout:.0f}s; {self}"
                self.kill()
                raise AssertionError(message)
            await asyncio.sleep(0.02)
        # Whatever it printed last is in self.lines once the reader saw the end of stdout.
        await asyncio.to_thread(self._ended.wait, 5.0)
        self._close_stdin()
        return self.proc.returncode

    async def stop(self, step: str = "a clean stop", timeout: float = STEP_TIMEOUT) -> int:
        """Close stdin (the cue to stop) and wait for the exit (see :meth:`exited`)."""
        self._close_stdin()
        return await self.exited(step, timeout)

    def signal(self, number: int) -> None:
        os.kill(self.proc.pid, number)

    def kill(self) -> None:
        """SIGKILL (if it still runs), and reap it."""
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
        self.proc.wait()
        self._close_stdin()

    def _close_stdin(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it exited with unread input
            self.proc.stdin.close()

    def stderr(self) -> str:
        # pread: the child writes through the same open file, so the offset must not move.
        fd = self._stderr.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def __str__(self) -> str:
        code = self.proc.poll()
        state = "still running" if code is None else f"exited with {code}"
        name = " ".join(Path(part).name for part in self.command[:2])
        shown = "\n".join(line[:500] for line in self.lines[-30:])
        return (
            f"{name} (pid {self.proc.pid}) {state}; its last stdout lines:\n{shown}\n"
            f"its stderr:\n{self.stderr()[-6000:]}"
        )


def run(
    *command: str,
    step: str,
    timeout: float = 2 * STEP_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a child to its successful end; one that fails or hangs fails the test with its
    output and names ``step``."""
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as exc:
        out, err = (_text(part) for part in (exc.stdout, exc.stderr))
        message = f"{step}: still running after {timeout:.0f}s (killed)"
        raise AssertionError(f"{message}\n--- stdout\n{out}\n--- stderr\n{err}") from None
    if done.returncode != 0:
        message = f"{step}: exited with {done.returncode}"
        raise AssertionError(f"{message}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")
    return done


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
