"""A Griffe extension for the API reference: the send methods show what a caller passes.

``AsyncSignal.send`` and its siblings are typed ``(*args: P.args, **kwargs: P.kwargs)`` so
that type checkers read each typed signal's spec into them. The reference would show that
literally, ``send(*args: args, **kwargs: kwargs)`` with "default: ``()``" parameters, hiding
that the sender is the one positional argument. What a call takes is ``(sender, /,
**kwargs)``: the spec rule of :func:`asignals.signal` (the sender first, the rest keyword-only).

``send_robust`` is a ``def`` returning ``send``'s coroutine (no second frame per send); a
reader awaits it like ``send``, so it is shown as ``async`` returning the coroutine's result.

Only the reference changes: the code and its typed signatures stay as the checkers need them.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SIGNAL_CLASS = "asignals._signal.AsyncSignal"
_PARAM_ARGS = re.compile(r"^(\s*):param args:", re.MULTILINE)


def _is_paramspec_pair(func: griffe.Function) -> bool:
    """``(self, *args: P.args, **kwargs: P.kwargs)``: what the send methods are typed as."""
    params = list(func.parameters)
    if len(params) != 3:
        return False
    _, star, stars = params
    return (
        star.kind is griffe.ParameterKind.var_positional
        and stars.kind is griffe.ParameterKind.var_keyword
        and str(star.annotation).endswith(".args")
        and str(stars.annotation).endswith(".kwargs")
    )


def _awaited_result(returns: object) -> object | None:
    """``X`` of a ``Coroutine[Any, Any, X]`` annotation, else ``None``."""
    if not isinstance(returns, griffe.ExprSubscript):
        return None
    if str(returns.left).rsplit(".", 1)[-1] != "Coroutine":
        return None
    elements = getattr(returns.slice, "elements", None)
    if not elements or len(elements) != 3:
        return None
    return elements[2]


class SenderSignatures(griffe.Extension):
    """Show the send methods of ``AsyncSignal`` as ``(sender, /, **kwargs)``."""

    def on_function(self, *, func: griffe.Function, **kwargs: Any) -> None:
        parent = func.parent
        if parent is None or parent.path != _SIGNAL_CLASS or not _is_paramspec_pair(func):
            return
        self_param, _, _ = list(func.parameters)
        func.parameters = griffe.Parameters(
            self_param,
            griffe.Parameter("sender", kind=griffe.ParameterKind.positional_only),
            griffe.Parameter("kwargs", kind=griffe.ParameterKind.var_keyword),
        )
        if func.docstring is not None:
            # The docstrings document the sender as ``args`` (the parameter checkers see).
            func.docstring.value = _PARAM_ARGS.sub(r"\1:param sender:", func.docstring.value)
        result = _awaited_result(func.returns)
        if result is not None and "async" not in func.labels:
            func.returns = result  # type: ignore[assignment]
            func.labels.add("async")
