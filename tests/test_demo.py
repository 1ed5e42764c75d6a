"""``scripts/demo``, the README's first command, works on a fresh clone.

A fresh clone installs only the ``examples`` extra before running the examples, while a
developer's ``.venv`` usually has the ``test`` extra too: an example importing a package that
only ``test`` brings passes here and fails for a new user. So every module the demo's examples
import must come from the standard library, from asignals, or from a distribution the
``examples`` extra requires (directly or through its dependencies).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "demo"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def demo_examples() -> list[str]:
    match = re.search(r"^for example in ([\w ]+); do$", DEMO.read_text(), re.MULTILINE)
    assert match, "scripts/demo no longer lists its examples in a `for example in ...` line"
    return match.group(1).split()


# Imports for an option scripts/demo does not use: (example, module) -> the option.
OPTIONAL = {("tracing", "matplotlib"): "--waterfall"}


def imported_modules(path: Path) -> set[str]:
    """Every top-level module ``path`` imports, also inside functions; other examples left out."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {
        name
        for name in found
        if not (path.parent / f"{name}.py").exists() and (path.stem, name) not in OPTIONAL
    }


def _name(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _requirements(name: str, extras: frozenset[str]) -> list[Requirement]:
    """What installing ``name[extras]`` asks for: read from pyproject.toml for this project
    (the installed metadata may predate an edit), from the installed metadata for the rest."""
    if _name(name) == _name(PROJECT["name"]):
        lines = list(PROJECT.get("dependencies", []))
        for extra in extras:
            lines += PROJECT["optional-dependencies"][extra]
        return [Requirement(line) for line in lines]
    found = []
    for line in metadata.requires(name) or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": e}) for e in (extras or {""})):
            found.append(requirement)
    return found


def required_by_extra(extra: str) -> set[str]:
    """The distributions ``pip install .[extra]`` installs."""
    wanted: set[str] = set()
    todo = [(PROJECT["name"], frozenset({extra}))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (_name(name), extras) in seen:
            continue
        seen.add((_name(name), extras))
        wanted.add(_name(name))
        for requirement in _requirements(name, extras):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return wanted


@pytest.mark.parametrize("example", demo_examples())
def test_every_import_of_a_demo_example_comes_with_the_examples_extra(example: str) -> None:
    brought = required_by_extra("examples")
    providers = metadata.packages_distributions()
    missing = {
        module: sorted(providers.get(module, ["?"]))
        for module in imported_modules(ROOT / "examples" / f"{example}.py")
        if module not in sys.stdlib_module_names
        and module != "asignals"
        and not brought.intersection(_name(d) for d in providers.get(module, []))
    }
    assert not missing, (
        f"examples/{example}.py imports modules the `examples` extra does not install "
        f"(module: distributions): {missing}; add them to `examples` in pyproject.toml"
    )


def test_the_quickstart_says_its_error_line_is_expected() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        # A terminal's stdout is line-buffered: the lines come in the order a user sees them.
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert run.returncode == 0, run.stdout
    lines = run.stdout.splitlines()
    [error] = [i for i, line in enumerate(lines) if line.startswith("ERROR asignals:")]
    assert "expected" in lines[error - 1], lines[: error + 1]
