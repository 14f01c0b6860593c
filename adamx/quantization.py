r"""Block-wise dynamic 8-bit quantization: the pure array functions behind int8 state.

A tensor is cut into blocks of ``block_size`` consecutive values along its last
axis. Each block keeps one float32 scale, its absolute maximum, and each value
keeps one byte: the index of the nearest entry of a 256-entry *dynamic code
map* to the value divided by its block's scale (Dettmers et al. 2022).

The dynamic map spends its bits like a tiny float: each decade
:math:`[10^{-k-1}, 10^{-k}]` below 1 gets a run of evenly spaced entries, and
larger decades get more of them. Small and large values therefore keep
similar *relative* precision, which a linear 8-bit grid cannot give a second
moment spanning several orders of magnitude within one block.

- The signed map (for first moments) has 0, and ±127 magnitudes over 7
  decades (1, 2, 4, …, 64 entries from the smallest decade to the largest),
  with ±1 exactly; its 256th entry is the smallest positive magnitude again
  halved, so the map stays sorted and unique.
- The unsigned map (for second moments, which are never negative) has 0 and
  255 magnitudes over 8 decades (1, 2, …, 128 entries).

Blocks lie along the last axis so that a tensor sharded on any axis keeps
whole blocks inside each shard whenever each shard's last-axis length is a
multiple of ``block_size``: quantizing then needs no communication.

References:
  Dettmers, Lewis, Shleifer & Zettlemoyer, *8-bit Optimizers via Block-wise
  Quantization*, ICLR 2022. https://arxiv.org/abs/2110.02861
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "dequantize_blockwise",
    "dynamic_code_map",
    "num_blocks",
    "quantize_blockwise",
]


@functools.lru_cache(maxsize=2)
def _code_map_numpy(signed: bool) -> np.ndarray:
    decades = 7 if signed else 8
    magnitudes = []
    for level in range(decades):  # level decades-1 is [0.1, 1]
        count = 2**level
        top = 10.0 ** (level - decades + 1)
        fractions = 0.1 + 0.9 * (np.arange(count) + 1) / count
        magnitudes.append(top * fractions)
    magnitudes = np.concatenate(magnitudes)
    if signed:
        extra = np.array([magnitudes.min() / 2])
        values = np.concatenate([-magnitudes, [0.0], extra, magnitudes])
    else:
        values = np.concatenate([[0.0], magnitudes])
    values = np.unique(values)
    assert values.size == 256, values.size
    return values.astype(np.float32)


def dynamic_code_map(signed: bool) -> jax.Array:
    """The sorted 256-entry code map, in float32 (see the module docstring).

    >>> m = dynamic_code_map(signed=False)
    >>> m.shape, float(m[0]), float(m[-1])
    ((256,), 0.0, 1.0)
    """
    return jnp.asarray(_code_map_numpy(signed))


def num_blocks(length: int, block_size: int) -> int:
    """Blocks needed for ``length`` values along the last axis."""
    return -(-length // block_size)


def _blocked(x: jax.Array, block_size: int) -> jax.Array:
    """``x`` as ``(..., blocks, block_size)``, zero-padding the last axis."""
    length = x.shape[-1]
    padded = num_blocks(length, block_size) * block_size
    if padded != length:
        pad = [(0, 0)] * (x.ndim - 1) + [(0, padded - length)]
        x = jnp.pad(x, pad)
    return x.reshape(*x.shape[:-1], padded // block_size, block_size)


def _take(table: jax.Array, indices: jax.Array) -> jax.Array:
    """``table[indices]`` for a small replicated table, sharded like ``indices``.

    Plain indexing cannot infer the result's sharding under explicit mesh axes;
    JAX versions without ``jax.typeof`` have no explicit axes and index plainly.
    """
    if not hasattr(jax, "typeof"):
        return table[indices]
    return table.at[indices].get(out_sharding=jax.typeof(indices).sharding)


def _nearest_code(normalized: jax.Array, code_map: jax.Array) -> jax.Array:
    """Index of the ``code_map`` entry nearest to each value: a binary search.

    ``bounds[k]`` is the midpoint between entries ``k`` and ``k + 1`` (the
    last is infinite); the result counts the bounds below each value, as
    ``jnp.searchsorted(bounds[:-1], normalized)`` would.
    """
    bounds = jnp.append((code_map[1:] + code_map[:-1]) / 2, jnp.inf)
    step = bounds.shape[0] // 2
    # Every search starts at 0, so the first probe is one bound for all values:
    # compare with it directly (gathering it per value made XLA constant-fold a
    # gather as large as the leaf at compile time).
    codes = jnp.where(bounds[step - 1] < normalized, step, 0).astype(jnp.int32)
    step //= 2
    while step:
        below = _take(bounds, codes + (step - 1)) < normalized
        codes = jnp.where(below, codes + step, codes)
        step //= 2
    return codes


@functools.partial(jax.jit, static_argnames=("block_size",))
def quantize_blockwise(
    x: jax.Array, code_map: jax.Array, block_size: int
) -> tuple[jax.Array, jax.Array]:
    r"""``(codes, scales)`` of ``x`` (at least 1-D), block by block along the last axis.

    ``scales[..., b]`` is the block's :math:`\max |x|` in float32; ``codes``
    (uint8, shaped like ``x``) index the ``code_map`` entry nearest to
    :math:`x / \text{scale}`. An all-zero block gets scale 0 and code 0's
    nearest entry, so it dequantizes to exactly 0.

    >>> import jax.numpy as jnp
    >>> codes, scales = quantize_blockwise(
    ...     jnp.array([0.5, -2.0, 0.0, 1.0]), dynamic_code_map(True), 4)
    >>> scales
    Array([2.], dtype=float32)
    >>> dequantize_blockwise(codes, scales, dynamic_code_map(True), 4)
    Array([ 0.5, -2. ,  0. ,  1. ], dtype=float32)
    """
    blocks = _blocked(x.astype(jnp.float32), block_size)
    scales = jnp.max(jnp.abs(blocks), axis=-1)
    safe = jnp.where(scales > 0, scales, 1.0)
    normalized = blocks / safe[..., None]
    # Nearest entry: the code map is sorted, so compare against the midpoints.
    codes = _nearest_code(normalized, code_map)
    codes = codes.reshape(*x.shape[:-1], -1)[..., : x.shape[-1]]
    return codes.astype(jnp.uint8), scales


@functools.partial(jax.jit, static_argnames=("block_size",))
def dequantize_blockwise(
    codes: jax.Array, scales: jax.Array, code_map: jax.Array, block_size: int
) -> jax.Array:
    """The float32 values that ``quantize_blockwise`` encoded."""
    values = _blocked(_take(code_map, codes.astype(jnp.int32)), block_size)
    values = values * scales[..., None]
    return values.reshape(*codes.shape[:-1], -1)[..., : codes.shape[-1]]
