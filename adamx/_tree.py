"""Walking parameter, update and state trees leaf by leaf, with clear errors.

Every transform maps a per-leaf function over the updates and its state
trees with :func:`map_leaves`. The state trees are flattened *up to* the
updates' structure, so a stored moment may itself be a small pytree (a
storage format with codes and scales) without the transform knowing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from adamx import _reduce

PyTree = Any


def _paths(tree: PyTree) -> list[str]:
    return [
        jax.tree_util.keystr(path)
        for path, _ in jax.tree_util.tree_leaves_with_path(tree)
    ]


def check_float_leaves(caller: str, what: str, tree: PyTree) -> None:
    """Raises TypeError naming the first leaf of ``tree`` that is not floating.

    Integer, boolean and ``float0`` leaves have no meaningful Adam update;
    rather than produce garbage or NaN for them, adamx refuses them. Mask them
    out with ``optax.masked`` or keep them out of the optimized tree.
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{caller}: {what} leaf {jax.tree_util.keystr(path) or '<root>'} has "
                f"dtype {dtype}; adamx optimizes floating and complex leaves only "
                "(wrap the transform in optax.masked to leave it out)"
            )


def _flatten_state_like(
    caller: str, treedef: Any, updates: PyTree, state: PyTree
) -> list[Any]:
    try:
        return treedef.flatten_up_to(state)
    except (ValueError, TypeError) as err:
        only_updates = sorted(set(_paths(updates)) - set(_paths(state)))
        only_state = sorted(set(_paths(state)) - set(_paths(updates)))
        raise ValueError(
            f"{caller}: the updates' tree does not match the optimizer state's tree. "
            f"Only in the updates: {only_updates[:5] or 'none'}; only in the state: "
            f"{only_state[:5] or 'none'}. Updates: {treedef}; state: "
            f"{jax.tree_util.tree_structure(state)}"
        ) from err


def map_leaves(
    caller: str,
    fn: Callable[..., tuple[jax.Array, ...]],
    updates: PyTree,
    states: Sequence[PyTree],
) -> tuple[PyTree, ...]:
    """Applies ``fn(index, path, g, *state_leaves) -> (new_g, *new_state_leaves)``.

    Args:
      caller: the transform's name, for errors.
      fn: the per-leaf update; it gets the leaf's position and its path as a
        string (for errors and for per-leaf randomness).
      updates: the incoming gradient tree.
      states: state trees shaped like ``updates``.

    Returns:
      ``(new_updates, *new_states)``, each with the updates' structure.
    """
    check_float_leaves(caller, "update", updates)
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(updates)
    state_leaves = [_flatten_state_like(caller, treedef, updates, s) for s in states]
    outputs = [
        fn(index, jax.tree_util.keystr(path) or "<root>", g, *per_leaf)
        for index, ((path, g), *per_leaf) in enumerate(
            zip(with_paths, *state_leaves, strict=True)
        )
    ]
    columns = list(zip(*outputs, strict=True)) if outputs else [()] * (1 + len(states))
    return tuple(treedef.unflatten(column) for column in columns)


def init_leaves(caller: str, fn: Callable[[jax.Array], Any], params: PyTree) -> PyTree:
    """``fn`` mapped over the floating leaves of ``params``; others raise TypeError.

    A TypeError that ``fn`` raises for one leaf is re-raised naming the leaf.
    """
    check_float_leaves(caller, "parameter", params)

    def init_one(path, param):
        try:
            return fn(param)
        except TypeError as err:
            where = jax.tree_util.keystr(path) or "<root>"
            raise TypeError(f"{caller}: parameter leaf {where}: {err}") from err

    return jax.tree_util.tree_map_with_path(init_one, params)


_INT32_MAX = 2**31 - 1
_saturating_add = _reduce.saturating_add
_SLICE = 2**20  # entries per non-finite count


def _wide(leaf: Any) -> jax.Array:
    """``leaf`` flattened, in float32 or wider (complex stays complex)."""
    leaf = jnp.asarray(leaf)
    return leaf.astype(jnp.promote_types(leaf.dtype, jnp.float32)).ravel()


def floating_leaves(tree: PyTree) -> list[jax.Array]:
    """The non-empty floating leaves, flattened, in float32 or wider."""
    return [
        _wide(leaf)
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) and jnp.size(leaf)
    ]


def sum_of_squares(tree: PyTree) -> jax.Array:
    r""":math:`\sum |x|^2` over the floating leaves of ``tree``, in float32 or wider.

    Computed as dot products, which XLA:CPU (jax 0.10) compiles to a square
    fused into the sum, reading ``x`` once, unless the same square is used
    elsewhere in the computation: then it is written out in full first.
    """
    zero = jnp.zeros([], jnp.float32)
    return sum((jnp.vdot(x, x).real for x in floating_leaves(tree)), zero)


def global_norm(tree: PyTree, squares: jax.Array | None = None) -> jax.Array:
    r"""The L2 norm of all floating entries of ``tree``, in float32, without overflow.

    The plain sum of squares (``squares``, if already computed) is used
    unless it over- or underflowed; only then (a ``lax.cond``) is the tree
    read again, by :func:`adamx._reduce.norm_and_largest`, whose rescaling
    lets entries up to the float32 maximum and down to its smallest normal
    count. The norm is NaN if an entry is NaN and :math:`+\infty` if one is
    infinite.
    """
    if not floating_leaves(tree):
        return jnp.zeros([], jnp.float32)
    squares = sum_of_squares(tree) if squares is None else squares
    fine = jnp.isfinite(squares) & (squares > jnp.finfo(jnp.float32).tiny)
    return jax.lax.cond(
        fine,
        lambda _: jnp.sqrt(squares),
        lambda _: _reduce.norm_and_largest(floating_leaves(tree))[0].astype(
            squares.dtype
        ),
        None,
    )


def count_nonfinite(
    tree: PyTree, squares: jax.Array | None = None, *, exact_limit: int = _INT32_MAX
) -> jax.Array:
    """The number of NaN or infinite entries of ``tree``: a saturating int32.

    A complex entry counts once. The count runs only when the sum of squares
    (``squares``, if already computed) is not finite, which any non-finite
    entry makes it; ``isfinite`` is several times slower than a sum on the
    CPU. It counts slices of at most ``exact_limit`` (and 2**20) entries one
    after the other (:func:`adamx._reduce.in_order`), so no full-size mask is
    written out, exactly within a slice and saturating across them.
    """
    leaves = floating_leaves(tree)
    squares = sum_of_squares(tree) if squares is None else squares

    def count(_):
        total = jnp.zeros([], jnp.int32)

        def reduce(piece):
            nonlocal total
            total = _saturating_add(
                total, jnp.sum(~jnp.isfinite(piece), dtype=jnp.int32)
            )
            return total

        # Slices of stored leaves, each counted after the previous one: the
        # mask of one slice is in memory at a time.
        limit = max(1, min(exact_limit, _SLICE))
        pieces = [x[i : i + limit] for x in leaves for i in range(0, x.size, limit)]
        for _ in _reduce.in_order(pieces, reduce):
            pass
        return total

    return jax.lax.cond(
        jnp.isfinite(squares), lambda _: jnp.zeros([], jnp.int32), count, None
    )
