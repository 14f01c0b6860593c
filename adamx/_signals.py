"""How an adamx transform hands its signal-to-noise ratio to ``with_stats``.

Plumbing, kept out of the public :mod:`adamx.diagnostics`: a ContextVar holds
a list while :func:`adamx.with_stats` traces its inner update, and every adamx
``scale_by_*`` it reaches appends a function that computes its ratio from its
new moments (:func:`report_signal`). Each entry carries the trace it was
reported in, because the arrays it closes over are usable only there.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.extend


class SignalSummary(NamedTuple):
    """Sum, maximum and size of one transform's signal-to-noise ratios."""

    total: jax.Array
    maximum: jax.Array
    size: int


Reported = tuple[Any, Callable[[], SignalSummary]]
_SIGNALS: contextvars.ContextVar[list[Reported] | None] = contextvars.ContextVar(
    "adamx_signals", default=None
)


def trace_state() -> Any:
    """Which trace is active: summaries are usable only in the one they came from."""
    return jax.extend.core.get_opaque_trace_state(convention="adamx")


def report_signal(summary: Callable[[], SignalSummary]) -> None:
    """Offers a transform's signal-to-noise summary to an enclosing ``with_stats``.

    ``summary`` is called only on the steps that record statistics, so the
    moments are read a second time only then. Outside ``with_stats`` this
    does nothing.
    """
    collector = _SIGNALS.get()
    if collector is not None:
        collector.append((trace_state(), summary))


@contextlib.contextmanager
def collecting() -> Iterator[list[Reported]]:
    """Collects the summaries reported while the ``with`` block runs."""
    collector: list[Reported] = []
    token = _SIGNALS.set(collector)
    try:
        yield collector
    finally:
        _SIGNALS.reset(token)
