"""``check_…`` helpers for the notebooks' exercise cells, one module per lesson.

Each helper runs the learner's function and the reference implementation on the same inputs,
and raises an ``AssertionError`` that explains the mismatch (or prints a short success line).
The message ends with a ``Hint:`` that names the likely cause: the helpers recognise the usual
mistakes of each exercise (tests/test_exercises_lessonNN.py hold one wrong implementation per
hint).

Three situations get the same treatment in every lesson (the functions below):

- the learner's function is still the stub of a student copy (``python -m pali3_edu.student``
  replaces each solution by ``raise NotImplementedError(...)``): :class:`ExerciseNotDone`, an
  ``AssertionError`` whose message says "✏️ Your turn" and what to do, without the stub's
  traceback;
- the learner's function raises anything else: an ``AssertionError`` naming the call, the
  exception and a hint, with the original exception chained below it (its traceback shows the
  line);
- the check is given something that is not a function (e.g. the result of calling it):
  a ``TypeError`` that says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["ExerciseNotDone", "call_learner", "fail", "function_name", "not_done", "require_callable"]

#: The hint for an exception the helper does not recognise.
READ_THE_TRACEBACK = ("the error comes from your function: read the traceback printed above this "
                      "message to find the line.")


class ExerciseNotDone(AssertionError):
    """The learner's function still raises ``NotImplementedError`` (the student copy's stub)."""


def function_name(fn: Any) -> str:
    """The name to show for the learner's function (``my_encode_box``), or "your function"."""
    return getattr(fn, "__name__", None) or "your function"


def fail(message: str, hint: str) -> AssertionError:
    """An ``AssertionError`` reading ``message``, then ``Hint: hint`` on its own line."""
    return AssertionError(f"{message}\nHint: {hint}")


def not_done(fn: Any) -> ExerciseNotDone:
    """The "your turn" message for a function that is still a stub."""
    name = function_name(fn)
    return ExerciseNotDone(
        f"✏️ Your turn: {name} is not written yet (it raises NotImplementedError). Replace the "
        f"`raise NotImplementedError(...)` line in the exercise cell with your code, run that cell, "
        f"then run this check again."
    )


def require_callable(fn: Any, check: str) -> None:
    """``TypeError`` when ``fn`` is not a function (e.g. ``check(my_fn(x))`` instead of ``check(my_fn)``)."""
    if not callable(fn):
        raise TypeError(f"{check} needs your function itself, got a {type(fn).__name__}: pass the "
                        f"name without calling it, e.g. {check}(my_function).")


def call_learner(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    call: str,
    hint_for: Callable[[Exception], str] | None = None,
) -> Any:
    """``fn(*args)``; a ``NotImplementedError`` becomes :class:`ExerciseNotDone`, any other
    exception an ``AssertionError`` naming ``call`` with ``hint_for(exception)`` as its hint."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise not_done(fn) from None
    except Exception as err:  # the learner's code may raise anything
        hint = hint_for(err) if hint_for is not None else READ_THE_TRACEBACK
        raise fail(f"{call} raised {type(err).__name__}: {err}", hint) from err
