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
