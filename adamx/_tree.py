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


def _wide(leaf: Any) -> jax.Array:
    """``leaf`` flattened, in float32 or wider (complex stays complex)."""
    leaf = jnp.asarray(leaf)
    return leaf.astype(jnp.promote_types(leaf.dtype, jnp.float32)).ravel()


def _floating_leaves(tree: PyTree) -> list[jax.Array]:
    return [
        _wide(leaf)
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) and jnp.size(leaf)
    ]


def sum_of_squares(tree: PyTree) -> jax.Array:
    r""":math:`\sum |x|^2` over the floating leaves of ``tree``, in float32 or wider.

    Computed as dot products: XLA on the CPU hands plain reductions to a
    library that cannot fuse their inputs, so ``sum(square(x))`` would first
    write ``square(x)`` out in full, while a dot product reads ``x`` once.
    """
    zero = jnp.zeros([], jnp.float32)
    return sum((jnp.vdot(x, x).real for x in _floating_leaves(tree)), zero)


def largest_magnitude(tree: PyTree) -> jax.Array:
    r""":math:`\max |x|` over the floating leaves (NaN if any entry is NaN)."""
    found = [
        jnp.max(jnp.abs(x)) if jnp.iscomplexobj(x) else jnp.maximum(x.max(), -x.min())
        for x in _floating_leaves(tree)
    ]
    return jnp.max(jnp.stack(found)) if found else jnp.zeros([], jnp.float32)


def global_norm(tree: PyTree, squares: jax.Array | None = None) -> jax.Array:
    r"""The L2 norm of all floating entries of ``tree``, in float32, without overflow.

    The plain sum of squares (``squares``, if already computed) is used
    unless it over- or underflowed; only then (a ``lax.cond``) is the tree
    read again, scaled by its largest magnitude :math:`M`:
    :math:`M \sqrt{\sum (|x_i| / M)^2}`. So entries up to the float32
    maximum and down to its smallest normal count. The norm is NaN if an
    entry is NaN and :math:`+\infty` if one is infinite.
    """
    leaves = _floating_leaves(tree)
    if not leaves:
        return jnp.zeros([], jnp.float32)
    squares = sum_of_squares(tree) if squares is None else squares

    def rescaled(_):
        largest = largest_magnitude(tree)
        scale = jnp.where(jnp.isfinite(largest) & (largest > 0), largest, 1.0)
        total = sum(jnp.vdot(x / scale, x / scale).real for x in leaves)
        return jnp.where(jnp.isfinite(largest), scale * jnp.sqrt(total), largest)

    fine = jnp.isfinite(squares) & (squares > jnp.finfo(jnp.float32).tiny)
    return jax.lax.cond(fine, lambda _: jnp.sqrt(squares), rescaled, None)


def _saturating_add(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a + b`` for int32 ``a, b >= 0``, stopping at the int32 maximum."""
    return jnp.where(a > _INT32_MAX - b, _INT32_MAX, a + b).astype(jnp.int32)


def count_nonfinite(
    tree: PyTree, squares: jax.Array | None = None, *, exact_limit: int = _INT32_MAX
) -> jax.Array:
    """The number of NaN or infinite entries of ``tree``: a saturating int32.

    A complex entry counts once. The count runs only when the sum of squares
    (``squares``, if already computed) is not finite, which any non-finite
    entry makes it; ``isfinite`` is several times slower than a sum on the
    CPU. Leaves of more than ``exact_limit`` entries are summed with a
    saturating addition.
    """
    leaves = _floating_leaves(tree)
    squares = sum_of_squares(tree) if squares is None else squares

    def count_leaf(x):
        bad = ~jnp.isfinite(x)
        if bad.size <= exact_limit:
            return jnp.sum(bad, dtype=jnp.int32)
        return jax.lax.reduce(
            bad.astype(jnp.int32), jnp.zeros([], jnp.int32), _saturating_add, (0,)
        )

    def count(_):
        total = jnp.zeros([], jnp.int32)
        for x in leaves:
            total = _saturating_add(total, count_leaf(x))
        return total

    return jax.lax.cond(
        jnp.isfinite(squares), lambda _: jnp.zeros([], jnp.int32), count, None
    )
