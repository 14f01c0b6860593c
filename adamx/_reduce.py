r"""Reductions of values computed just to be reduced, one leaf after another.

XLA:CPU (jax 0.10) hands a plain reduction (``jnp.sum``, ``jnp.max``) to a
library that fuses only a few element-wise ops into it; any other producer (a
select, a square root, or a value read by two reductions) is first written
out in full, a temporary the size of its input. And XLA runs independent
work side by side, so the temporaries of all leaves would coexist. Here the
leaves are reduced one after the other (:func:`in_order`): each is multiplied
by a 1 computed from the totals so far (:func:`one_after`), which XLA cannot
fold, so it waits for them, and the temporaries of one leaf are freed before
the next is computed. The peak is then a few buffers the size of the largest
leaf, not of the tree.

Cutting a leaf into chunks does not lower that peak for a computed value: XLA
writes the whole value out once and slices it, rather than computing it once
per chunk. Measured on this project's 2-core CPU, a variadic ``lax.reduce``,
which keeps the producer inside its loop and writes nothing out, ran 30 to 70
times slower than the same element-wise work written out, once the producer
held a select or a square root.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp

_INT32_MAX = 2**31 - 1
_TINY = float(jnp.finfo(jnp.float32).tiny)
_DOWN, _UP = 2.0**-64, 2.0**64


def saturating_add(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a + b`` for int32 ``a, b >= 0``, stopping at the int32 maximum."""
    return jnp.where(a > _INT32_MAX - b, _INT32_MAX, a + b).astype(jnp.int32)


def one_after(x: jax.Array) -> jax.Array:
    """An int32 1 that XLA computes from ``x`` and cannot fold.

    Multiplying by it orders a computation after ``x``'s, at no cost, and
    leaves every value (NaN and infinities included) as it is.
    """
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        x = jax.lax.bitcast_convert_type(jnp.real(x).astype(jnp.float32), jnp.int32)
    return 1 - jnp.minimum(jnp.maximum(x.astype(jnp.int32), 0), 0)


def times_one(one: jax.Array, x: jax.Array) -> jax.Array:
    """``x`` times the int ``one``, which is 1: exactly ``x``, in its dtype."""
    if jnp.iscomplexobj(x):  # (a + bi)(1 + 0i) would turn an infinite b into NaN
        real = one.astype(x.real.dtype)
        return jax.lax.complex(x.real * real, x.imag * real)
    return x * one.astype(x.dtype)


def in_order(
    values: Iterable[jax.Array],
    reduce: Callable[[jax.Array], jax.Array],
    *,
    after: jax.Array | None = None,
    ordered: bool = True,
) -> Iterator[jax.Array]:
    """``reduce`` of each flattened value, each computed after the previous one.

    ``reduce(value)`` must return a scalar computed from the whole value (the
    next value waits for it); the results are yielded in order. With
    ``ordered=False`` nothing waits: for values already in memory, whose
    reductions need no temporaries.
    """
    previous = after
    for value in values:
        flat = jnp.ravel(value)
        if ordered and previous is not None:
            flat = times_one(one_after(previous), flat)
        previous = reduce(flat)
        yield previous


def sum_and_max(
    x: jax.Array, *, after: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    r""":math:`\sum_i x_i` and :math:`\max(0, \max_i x_i)` of a non-negative ``x``.

    For a value computed just for this (a signal-to-noise ratio from
    moments). NaN if an entry is NaN. ``after``: a value to compute ``x``
    after (the totals of the previous leaf), so that the values of several
    leaves are not in memory together.
    """
    zero = jnp.zeros([], jnp.result_type(x))
    total, largest = zero, zero

    def reduce(piece):
        nonlocal total, largest
        total = total + jnp.sum(piece)
        largest = jnp.maximum(largest, jnp.max(piece))
        return total

    for _ in in_order([x], reduce, after=after):
        pass
    return total, largest


def norm_and_largest(
    values: Iterable[jax.Array],
    *,
    after: jax.Array | None = None,
    stored: bool = False,
) -> tuple[jax.Array, jax.Array]:
    r"""The L2 norm and :math:`\max |x_i|` of the entries of ``values``.

    Each value gives :math:`s = \sum |x_i|^2`, its largest magnitude :math:`m`
    and :math:`t = \sum (|x_i|/m)^2`, which is :math:`s/m^2` from the two
    scalars unless :math:`s` over- or underflowed; only then (a ``lax.cond``)
    is the value read again, divided by :math:`m`. The norm is
    :math:`\sqrt{\sum s}` unless that sum over- or underflowed, and otherwise
    :math:`M \sqrt{\sum (m/M)^2 t}` with :math:`M = \max m`: so entries up to
    the float32 maximum and down to its smallest normal count. It is NaN if an
    entry is NaN and :math:`+\infty` if one is infinite. The values are
    computed one after the other, the first after ``after``
    (:func:`in_order`), unless they are ``stored`` in memory already.
    """
    parts: list[tuple[jax.Array, jax.Array, jax.Array]] = []
    zero = jnp.zeros([], jnp.float32)

    def reduce(piece):
        if jnp.iscomplexobj(piece):
            squares = jnp.sum(jnp.square(piece.real) + jnp.square(piece.imag))
            largest = jnp.max(jnp.abs(piece))
        else:
            squares = jnp.sum(piece * piece)
            largest = jnp.maximum(jnp.max(piece), -jnp.min(piece))
        exact = jnp.isfinite(squares) & (squares > _TINY)
        reread = ~exact & jnp.isfinite(largest) & (largest > 0)

        def from_scalars(_):
            ratio = jnp.sqrt(squares) / jnp.where(exact, largest, 1)
            return jnp.where(exact, ratio * ratio, 0).astype(squares.dtype)

        def rescaled(piece):
            # XLA divides by multiplying with the reciprocal, which is
            # flushed to 0 above 2**126: bring both towards 1 first.
            s = jnp.where(largest > 1, _DOWN, _UP).astype(largest.dtype)
            y = (piece * s) / (largest * s)
            return jnp.sum(jnp.square(jnp.abs(y)))

        parts.append(
            (squares, largest, jax.lax.cond(reread, rescaled, from_scalars, piece))
        )
        return squares

    for _ in in_order(values, reduce, after=after, ordered=not stored):
        pass
    if not parts:
        return zero, zero
    squares = sum((s for s, _, _ in parts), zero)
    largest = jnp.max(jnp.stack([m for _, m, _ in parts]))
    scale = jnp.where(jnp.isfinite(largest) & (largest > 0), largest, 1)
    scaled = sum((t * jnp.square(m / scale) for _, m, t in parts), zero)
    rescaled = jnp.where(jnp.isfinite(largest), scale * jnp.sqrt(scaled), largest)
    exact = jnp.isfinite(squares) & (squares > _TINY)
    return jnp.where(exact, jnp.sqrt(squares), rescaled), largest
