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


def _awaited_result(returns: str | griffe.Expr | None) -> str | griffe.Expr | None:
    """``X`` of a ``Coroutine[Any, Any, X]`` annotation, else ``None``."""
    if not isinstance(returns, griffe.ExprSubscript):
        return None
    if str(returns.left).rsplit(".", 1)[-1] != "Coroutine":
        return None
    elements = getattr(returns.slice, "elements", None)
    if not elements or len(elements) != 3:
        return None
    result: str | griffe.Expr = elements[2]
    return result


def _show_as_sender_call(func: griffe.Function) -> None:
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
        func.returns = result
        func.labels.add("async")


class SenderSignatures(griffe.Extension):
    """Show the send methods of ``AsyncSignal`` as ``(sender, /, **kwargs)``."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != "asignals":
            return
        signal_class = pkg.get_member(_SIGNAL_CLASS.removeprefix("asignals."))
        methods = [m for m in signal_class.members.values() if isinstance(m, griffe.Function)]
        senders = [m for m in methods if _is_paramspec_pair(m)]
        if not senders:
            # Fail the strict build rather than silently show P.args again.
            griffe.logger.warning(
                "docs/_hooks/sender_signatures.py: no method of %s is typed "
                "(*args: P.args, **kwargs: P.kwargs) any more; update the extension",
                _SIGNAL_CLASS,
            )
        for method in senders:
            _show_as_sender_call(method)
