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


def _name(match: re.Match[str]) -> str:
    target = match[1]
    shown = target.rsplit(".", 1)[-1] if match[0].find("`~") != -1 else target
    return f"`{shown}`"


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` to ```target``` in every docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_name, obj.docstring.value)
