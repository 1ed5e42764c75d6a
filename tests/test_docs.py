"""Every ```python block of README.md and docs/ runs, so the docs cannot rot.

The convention (see docs/contributing.md): a ```python block is a complete program, run on its
own as a script in a fresh directory, and must exit 0 within a few seconds; ```py blocks are
fragments, shown and highlighted, never run. A block with a ``title="name.py"`` (mkdocs-material
shows it as the file name) is also a file of its page: every titled block of a page is written
next to each block of that page, so ``from app import app`` works as it does for a reader who
saved the files; a titled ``test_*.py`` block is run with pytest instead of as a script (with
AnyIO's plugin; pytest-asyncio is left out, its configuration warning would fail the block).

Each block is one test item named ``path:line``, e.g.
``tests/test_docs.py::test_block[docs/getting-started.md:41]``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60
"""Seconds a block may take before it counts as hung (the machine may be loaded)."""

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_TITLE = re.compile(r'title="(?P<title>[^"]+)"')
_WARNING = re.compile(r"^\S.*:\d+: \w*Warning: .*$", re.MULTILINE)
"""A warning printed by Python: a weak receiver lost, a coroutine never awaited..."""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    """1-based line of the opening fence."""
    lang: str
    title: str | None
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, indented ones (in lists) included."""
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening or not opening["info"].strip():
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        info = opening["info"].strip()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        if j == len(lines):
            raise ValueError(f"{path}:{i + 1}: code block never closed")
        title = _TITLE.search(info)
        lang = info.split()[0].lower()
        found.append(Block(path, i + 1, lang, title["title"] if title else None, "\n".join(body)))
        i = j + 1
    return found


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def runnable(paths: list[Path]) -> list[Block]:
    return [b for p in paths for b in blocks_of(p) if b.lang == "python"]


def run_block(block: Block, workdir: Path, page: list[Block]) -> subprocess.CompletedProcess[str]:
    """Write the page's files and this block into ``workdir`` and run the block there."""
    for other in page:
        if other.title:
            (workdir / other.title).write_text(other.code + "\n", encoding="utf-8")
    script = workdir / (block.title or f"block_{block.line}.py")
    script.write_text(block.code + "\n", encoding="utf-8")
    if script.name.startswith("test_"):
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:asyncio",
        ]
        command.append(script.name)
    else:
        command = [sys.executable, script.name]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


def _page(block: Block) -> list[Block]:
    return runnable([block.path])


BLOCKS = runnable(markdown_files())


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block(block: Block, tmp_path: Path) -> None:
    """The block runs to completion, exit status 0, and prints no Python warning."""
    done = run_block(block, tmp_path, _page(block))
    output = f"\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 0, f"{block.id} exited with {done.returncode}{output}"
    warned = _WARNING.findall(done.stderr)
    assert not warned, f"{block.id} printed a warning: {warned[0]}{output}"


def test_the_collector_runs_python_blocks_and_shows_py_ones(tmp_path: Path) -> None:
    """A broken ```python block fails, so does a warning; indented blocks are found, ```py
    blocks are not run."""
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n```python\nprint('fine')\n```\n\n"
        "- a list item:\n\n    ```python\n    raise SystemExit(3)\n    ```\n\n"
        "```py\nthis is not python at all\n```\n\n"
        "```python\nimport warnings\nwarnings.warn('lost')\n```\n",
        encoding="utf-8",
    )
    blocks = runnable([page])
    assert [b.line for b in blocks] == [3, 9, 17]
    assert blocks[1].code == "raise SystemExit(3)"  # the list item's indent is removed
    done = [run_block(b, tmp_path, blocks) for b in blocks]
    assert [d.returncode for d in done] == [0, 3, 0]
    assert not _WARNING.search(done[0].stderr)
    assert _WARNING.search(done[2].stderr), done[2].stderr
    assert len(blocks_of(page)) == 4  # the ```py block is parsed, only not run


def test_every_page_has_blocks_or_is_a_stub() -> None:
    """The collector sees the docs: the runnable pages the guides promise are collected."""
    ids = {b.path.relative_to(ROOT).as_posix() for b in BLOCKS}
    for page in ("docs/getting-started.md", "docs/guides/signals.md", "docs/guides/fastapi.md"):
        assert page in ids, f"no ```python block collected from {page}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_getting_started_app_serves_under_uvicorn(tmp_path: Path) -> None:
    """What a new user does with the getting-started page: save app.py, run uvicorn, POST.

    The request gets its answer, the background receiver runs after it, and stopping the
    server (SIGINT, as Ctrl-C) drains the pending send before "Application shutdown complete".
    """
    page = runnable([ROOT / "docs" / "getting-started.md"])
    (app,) = [b for b in page if b.title == "app.py"]
    (tmp_path / "app.py").write_text(app.code + "\n", encoding="utf-8")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    response: httpx.Response | None = None
    try:
        deadline = time.monotonic() + 60
        while server.poll() is None and time.monotonic() < deadline:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/orders", json={"item": "widget", "quantity": 2}
                )
                break
            except httpx.TransportError:
                time.sleep(0.2)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            output, _ = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
            output += "\n(killed: no exit within 60 s of SIGINT)"
    assert response is not None, f"uvicorn never answered POST /orders; it printed:\n{output}"
    assert response.status_code == 200, response.text
    assert response.json() == {"id": 1, "item": "widget", "quantity": 2}
    assert "emailed confirmation for order 1" in output, output
    assert output.index("emailed confirmation") < output.index("Application shutdown complete")
