"""The one skeleton every adamx ``scale_by_*`` is built on.

A variant supplies only its per-leaf maths: a function of the gradient and its
moments, already read into the compute dtype, plus the step count and the
hyperparameters cast to that dtype. This module does the rest once for all
variants: the saturating int32 count, the starting moments at ``init`` (zero
unless given), reading and writing the declared storage, casting the update
back to the gradient's dtype, and the leaf-by-leaf walk with its errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx import numerics
from adamx._tree import init_leaves, map_leaves
from adamx._validation import caller_name
from adamx.storage import StateStorage

LeafUpdate = Callable[..., tuple[jax.Array, ...]]

# Hyperparameters by these names are decay rates: they reach the leaf update as
# numerics.Decay, carrying 1 - beta formed before rounding to float32.
DECAYS = frozenset({"b1", "b2", "b3", "decay"})


def moment_transform(
    caller: str,
    state_type: type[NamedTuple],
    storages: Sequence[StateStorage],
    hyperparameters: Mapping[str, Any],
    leaf_update: LeafUpdate,
    *,
    initial_values: Sequence[Any] | None = None,
) -> optax.GradientTransformation:
    """Builds a transformation whose state is ``state_type(count, *moments)``.

    Args:
      caller: the public name, quoted in errors.
      state_type: a NamedTuple whose first field is ``count`` and whose other
        fields are the moments, in the order of ``storages``.
      storages: how each moment is stored.
      hyperparameters: name to value (number, array or tracer) or schedule (a
        callable of the 0-based step, as optax schedules are); each reaches
        ``leaf_update`` evaluated and cast to the leaf's compute dtype, the
        decay rates (named in ``DECAYS``) as :class:`adamx.numerics.Decay`.
      leaf_update: ``leaf_update(g, *moments, count=t, **hyperparameters) ->
        (update, *new_moments)``, all in the compute dtype; ``t`` is the
        1-based step.
      initial_values: the scalar each moment starts from, in the order of
        ``storages`` (a number, array or tracer); None starts every moment at
        zero.

    Returns:
      The ``optax.GradientTransformation``.
    """
    caller = caller_name(caller)

    def init_fn(params: optax.Params) -> NamedTuple:
        starts = (0.0,) * len(storages) if initial_values is None else initial_values
        moments = [
            init_leaves(caller, lambda p, s=storage, v=start: s.init(p, v), params)
            for storage, start in zip(storages, starts, strict=True)
        ]
        return state_type(jnp.zeros([], jnp.int32), *moments)

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        values = {
            name: value(state.count) if callable(value) else value
            for name, value in hyperparameters.items()
        }

        def leaf(index, path, g, *stored):
            for storage, x in zip(storages, stored, strict=True):
                problem = storage.mismatch(x, g.shape)
                if problem is not None:
                    raise ValueError(
                        f"{caller}: the state leaf for update {path} {problem}"
                    )
            dtype = numerics.compute_dtype(g.dtype)
            cast = {
                k: (numerics.as_decay if k in DECAYS else numerics.hyperparameter)(
                    v, dtype
                )
                for k, v in values.items()
            }
            moments = [s.read(x) for s, x in zip(storages, stored, strict=True)]
            update, *new = leaf_update(g.astype(dtype), *moments, count=count, **cast)
            written = [
                s.write(n, x, _rounding_key(s, count, index, slot))
                for slot, (s, n, x) in enumerate(
                    zip(storages, new, stored, strict=True)
                )
            ]
            return (update.astype(g.dtype), *written)

        updates, *moments = map_leaves(caller, leaf, updates, tuple(state)[1:])
        return updates, state_type(count, *moments)

    return optax.GradientTransformation(init_fn, update_fn)


def _rounding_key(
    storage: StateStorage, count: jax.Array, leaf: int, slot: int
) -> jax.Array | None:
    """Noise for stochastic rounding: a function of seed, step, leaf and moment.

    Deriving it keeps the state free of a key and makes runs reproducible.
    """
    if storage.stochastic is None:
        return None
    key = jax.random.fold_in(jax.random.key(storage.stochastic.seed), count)
    return jax.random.fold_in(key, leaf * 16 + slot)
