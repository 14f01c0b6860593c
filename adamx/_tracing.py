"""What adamx asks about the trace it runs in, in one place.

Two questions need JAX's tracer types: whether a value is known now (a number
or a concrete array, which numerics may fold into constants) and whether it is
being staged into a compiled program. Only the second needs a JAX internal,
``partial_eval.DynamicJaxprTracer``; if JAX moves it, this module is the one
to change.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.interpreters import partial_eval


def is_concrete(value: Any) -> bool:
    """True for a value (or a tree of them) known while tracing: no tracer in it."""
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(value))


def is_staged(value: Any) -> bool:
    """True while ``value`` is being traced into a jitted program.

    Eager values and the tracers of ``jax.grad`` or ``jax.vmap`` outside a jit
    are not staged: a transform that jits its per-leaf step only does so under
    an outer jit, where the inner jit costs nothing and is traced once per shape.
    """
    return isinstance(value, partial_eval.DynamicJaxprTracer)


def is_abstract(value: Any) -> bool:
    """True for a ``jax.ShapeDtypeStruct``: a shape and dtype with no values."""
    return isinstance(value, jax.ShapeDtypeStruct)
