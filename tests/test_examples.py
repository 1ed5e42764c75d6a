"""The examples that need a server (so are not in ``scripts/demo``) run as a user would run them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from waiting import run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    ("example", "last_line"),
    [
        ("outbox.py", "ok"),
        ("multiworker.py", "OK: both workers saw the order, one sent the receipt"),
    ],
)
def test_example_that_needs_redis_runs_to_its_success_line(
    redis_url: str, example: str, last_line: str
) -> None:
    done = run(
        sys.executable,
        str(EXAMPLES / example),
        step=f"examples/{example}",
        env={**os.environ, "ASIGNALS_REDIS_URL": redis_url},
    )
    assert done.stdout.strip().splitlines()[-1] == last_line, done.stdout + done.stderr
