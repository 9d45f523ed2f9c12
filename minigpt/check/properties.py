"""One property over many examples, keeping the smallest that fails.

hypothesis draws the examples (sizes, positions, seeds) and, when one fails, shrinks it to the
smallest that still fails: a learner reads "query 0 changed when key 1 changed (t=2)", not a
random case of twelve positions. Runs are derandomised, so a report is the same every time.
"""

from __future__ import annotations

from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..checks import ContractError
from .report import Finding

EXAMPLES = 25  # per property: enough to meet every shape the strategies draw, a second or so a property


def crashed(error: Exception) -> tuple[str, str]:
    """A piece that raised: what to print, and the cause it points at."""
    text = f"raised {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if isinstance(error, NotImplementedError):
        return "raised NotImplementedError: not written yet", "not-written"
    if isinstance(error, ContractError):
        return text, "cache-contract" if str(error).startswith("kv(k, v)") else "shape"
    return text, "crash"


def holds(name: str, cause: str, strategy: st.SearchStrategy, test: Callable[[Any], str | None],
          examples: int = EXAMPLES) -> Finding:
    """The property `test` (an example -> None when it holds, else what went wrong in words) over
    `examples` drawn from `strategy`; a failure is the smallest example hypothesis finds."""
    failures: list[tuple[str, str]] = []

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(example):
        try:
            failure = test(example)
            failure = None if failure is None else (failure, cause)
        except Exception as error:  # the learner's code may raise anything: report it, do not stop
            failure = crashed(error)
        if failure is not None:
            failures.append(failure)  # the last one recorded is the shrunk example hypothesis replays
            raise AssertionError(failure[0])

    try:
        run()
    except Exception:  # AssertionError, or hypothesis' own report that the failure was flaky
        if not failures:
            raise
    if not failures:
        return Finding(name)
    text, cause = failures[-1]
    return Finding(name, failure=text, cause=cause)


def once(name: str, cause: str, test: Callable[[], str | None]) -> Finding:
    """A property checked on one input the suite chose (a comparison with GPT-2's weights)."""
    return holds(name, cause, st.just(None), lambda _: test(), examples=1)
