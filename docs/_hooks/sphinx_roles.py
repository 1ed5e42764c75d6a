"""A Griffe extension for the API reference: Sphinx roles in docstrings become code.

The docstrings are written for both ``help()`` and the reference, in reST's inline style:
``:class:`Dispatcher```, ``:func:`asignals.dispatcher```. Markdown has no roles, so without this
they would show as ``:func:`` followed by the name. Each becomes an inline code span of the
name (``~a.b.c`` shows ``c``, as in Sphinx).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`~?([^`]+)`")
# ``:raises ~asignals.BacklogFull:`` shows ``BacklogFull`` in Sphinx; Griffe would show the ``~``.
_RAISES_TILDE = re.compile(r"^(\s*:raises\s+)~(?:[\w.]+\.)?(\w+)", re.MULTILINE)


def _name(match: re.Match[str]) -> str:
    target = match[1]
    shown = target.rsplit(".", 1)[-1] if match[0].find("`~") != -1 else target
    return f"`{shown}`"


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` to ```target``` in every docstring, and
    ``:raises ~a.b.C:`` to ``:raises C:``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            value = _ROLE.sub(_name, obj.docstring.value)
            obj.docstring.value = _RAISES_TILDE.sub(r"\1\2", value)
