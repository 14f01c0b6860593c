r"""Block-wise low-bit codes: the pure array functions behind 8- and 4-bit state.

A tensor is cut into blocks of ``block_size`` consecutive values along its last
axis. Each block keeps one int8 *exponent* :math:`E` (its scale is the power of
two :math:`2^E`, so one byte per block), and each value keeps a small float
code of :math:`y = x / 2^E`: a sign (for signed formats), ``exponent_bits``
and ``mantissa_bits``, like a tiny IEEE float. Every code is made and read
with integer and bit arithmetic on the float32 bit pattern of :math:`y`, so
XLA fuses encode and decode into the element-wise loops around them: there is
no table, no gather and no search.

Formats (:data:`FORMATS`):

- ``int8`` signed (first moments): sign + e4m3 with subnormals, the layout of
  float8 e4m3: magnitudes :math:`0` and :math:`2^{-17}` … :math:`1.875`,
  relative spacing :math:`\le 2^{-3}` above :math:`2^{-14}`;
- ``int8`` unsigned (second moments): e5m3 *without zero*: :math:`2^{-31}` …
  :math:`1.875`. A second moment can never be read back as 0, which would turn
  the next step into :math:`m/\epsilon` (the zero-point problem of Li et al.
  2023); a tiny value is rounded up to the smallest code instead, which can
  only shrink a step;
- ``int4`` signed: sign + e2m1 with subnormals (the FP4 e2m1 layout):
  :math:`\{0, 0.125, 0.25, 0.375, 0.5, 0.75, 1, 1.5\}`;
- ``int4`` unsigned: e3m1 without zero: :math:`2^{-7}` … :math:`1.5`.

Two 4-bit codes share a byte, pairing neighbours along the last axis.

**Rounding.** Codes are written with stochastic rounding: a value between two
neighbouring codes rounds up with probability equal to its distance from the
lower one, so the stored value is unbiased. Round-to-nearest would make a
moving average stall: with 3 mantissa bits a second moment decaying at
:math:`\beta_2 = 0.999` moves by 0.1% of :math:`g^2 - v` per step, far less
than half a code, and would never change again. The noise is a cheap integer
hash of the element's position and a per-step salt, so it needs no key in the
state and the same run gives the same bits.

**Error bound.** For a value inside a format's normal range the code is one
of the two neighbours that bracket it, so the relative error of one encode is
below :math:`2^{-m}` (m = mantissa bits: 12.5% for int8, 50% for int4), and its
expectation is 0. Below the normal range the spacing is absolute:
:math:`2^{E + 1 - b - m}` with b the format's exponent bias.

**Block exponents.** :math:`E` is the smallest integer with
:math:`\text{bound} \le \text{top} \cdot 2^E`, where top is the largest code
value and ``bound`` any upper bound of the block's :math:`|x|`: an exact
maximum, or a cheaper bound (see ``adamx._transform``). Because codes are
floats, a loose bound costs range at the bottom, not precision. A block whose
bound is not finite stores the exponent ``-128`` and decodes to NaN, so a
non-finite gradient stays visible. An all-zero block stores ``-127`` (scale 0).

Blocks lie along the last axis so that a tensor sharded on any axis keeps
whole blocks inside each shard whenever each shard's last-axis length is a
multiple of ``block_size``: quantizing then needs no communication.

References:
  Dettmers, Lewis, Shleifer & Zettlemoyer, *8-bit Optimizers via Block-wise
  Quantization*, ICLR 2022. https://arxiv.org/abs/2110.02861

  Li, Chen & Zhu, *Memory Efficient Optimizers with 4-bit States*, NeurIPS
  2023. https://arxiv.org/abs/2309.01507

  Micikevicius et al., *FP8 Formats for Deep Learning*, 2022.
  https://arxiv.org/abs/2209.05433
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "FORMATS",
    "CodeFormat",
    "block_exponents",
    "blocked_abs_max",
    "decode",
    "dequantize_blockwise",
    "encode",
    "exponent_scale",
    "num_blocks",
    "quantize_blockwise",
    "rounding_noise",
]

NONFINITE_EXPONENT = -128
ZERO_EXPONENT = -127


class CodeFormat(NamedTuple):
    """A small float code: ``bits`` per value, ``signed`` or not.

    Signed formats have a sign bit and subnormals (so an exact 0); unsigned
    formats have neither: their smallest code is a positive value.
    """

    bits: int
    signed: bool
    exponent_bits: int
    mantissa_bits: int

    @property
    def bias(self) -> int:
        """Exponent bias; the largest exponent field decodes to :math:`2^0`."""
        return 2**self.exponent_bits - 1

    @property
    def max_code(self) -> int:
        """The largest magnitude code."""
        return 2 ** (self.exponent_bits + self.mantissa_bits) - 1

    @property
    def top(self) -> float:
        """The largest value a code decodes to (before the block scale)."""
        return 2.0 - 2.0**-self.mantissa_bits

    @property
    def _offset(self) -> int:
        # Code k of the normal range has the float32 bit pattern
        # (k + offset) << (23 - mantissa_bits).
        return (127 - self.bias) << self.mantissa_bits


FORMATS: dict[tuple[int, bool], CodeFormat] = {
    (8, True): CodeFormat(8, True, 4, 3),
    (8, False): CodeFormat(8, False, 5, 3),
    (4, True): CodeFormat(4, True, 2, 1),
    (4, False): CodeFormat(4, False, 3, 1),
}


def num_blocks(length: int, block_size: int) -> int:
    """Blocks needed for ``length`` values along the last axis."""
    return -(-length // block_size)


def _blocked(x: jax.Array, block_size: int) -> jax.Array:
    """``x`` as ``(..., blocks, block_size)``, zero-padding the last axis."""
    length = x.shape[-1]
    padded = num_blocks(length, block_size) * block_size
    if padded != length:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, padded - length)])
    return x.reshape(*x.shape[:-1], padded // block_size, block_size)


def per_value(blocks: jax.Array, block_size: int, length: int) -> jax.Array:
    """Per-block values ``(..., blocks)`` repeated for each of ``length`` values."""
    wide = jnp.broadcast_to(blocks[..., None], (*blocks.shape, block_size))
    return wide.reshape(*blocks.shape[:-1], -1)[..., :length]


def blocked_abs_max(x: jax.Array, block_size: int) -> jax.Array:
    r"""Each block's :math:`\max |x|`, from two reductions of ``x`` as it is.

    ``max(max(x), -min(x))`` rather than ``max(|x|)``: a reduction of an
    array already in memory is fast, one behind an element-wise ``abs`` is
    not on every backend. Works for float and signed integer ``x``.
    """
    blocks = _blocked(x, block_size)
    return jnp.maximum(jnp.max(blocks, axis=-1), -jnp.min(blocks, axis=-1))


def _per_block(fn, blocks: jax.Array, runtime: jax.Array | None):
    """``fn(blocks)`` on per-block arrays, kept in memory rather than recomputed.

    XLA fuses cheap per-block arithmetic into the element-wise loop that
    broadcasts it, evaluating it again for every value. A conditional is a
    fusion boundary: its results are computed once and stored. Both branches
    are ``fn``; the predicate, from ``runtime`` (any scalar known only when
    the program runs, such as the step count), only has to be opaque to XLA.
    None computes ``fn`` inline.
    """
    if runtime is None:
        return fn(blocks)
    value = jnp.asarray(runtime, jnp.float32)
    return jax.lax.cond(value == value, fn, fn, blocks)


def exponent_scale(exponents: jax.Array) -> jax.Array:
    """:math:`2^E` in float32 for int8 block exponents (NaN for ``-128``)."""
    e = exponents.astype(jnp.int32)
    scale = jax.lax.bitcast_convert_type(jnp.maximum(e + 127, 0) << 23, jnp.float32)
    return jnp.where(e == NONFINITE_EXPONENT, jnp.nan, scale)


def _inverse_scale(exponents: jax.Array) -> jax.Array:
    e = jnp.clip(exponents.astype(jnp.int32), -126, 126)
    return jax.lax.bitcast_convert_type((127 - e) << 23, jnp.float32)


def block_exponents(bound: jax.Array, fmt: CodeFormat) -> jax.Array:
    r"""The smallest int8 :math:`E` with ``bound`` :math:`\le` ``fmt.top`` :math:`2^E`.

    >>> block_exponents(jnp.array([1.875, 2.0, 0.0, jnp.inf]), FORMATS[8, True])
    Array([   0,    1, -127, -128], dtype=int8)
    """
    bound = bound.astype(jnp.float32)
    _, exponent = jnp.frexp(bound / np.float32(fmt.top))
    # frexp's exponent satisfies z <= 2**e; an exact power of two z = 2**(e-1)
    # fits one lower.
    exact = jnp.ldexp(np.float32(fmt.top), exponent - 1) >= bound
    exponent = jnp.where(exact, exponent - 1, exponent)
    exponent = jnp.clip(exponent, -126, 126)
    exponent = jnp.where(bound > 0, exponent, ZERO_EXPONENT)
    exponent = jnp.where(jnp.isfinite(bound), exponent, NONFINITE_EXPONENT)
    return exponent.astype(jnp.int8)


def _mix(x: jax.Array) -> jax.Array:
    """A 32-bit integer hash (Wellons' lowbias32), for the per-step salt."""
    x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
    x = (x ^ (x >> 15)) * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def rounding_noise(shape: tuple[int, ...], salt: jax.Array) -> jax.Array:
    r"""Uniform uint32 noise for each position of ``shape``, given a scalar salt.

    A Weyl-style sequence: the element's row-major index, xor a hash of ``salt``,
    times an odd constant near :math:`2^{32}/\varphi`. Each element's noise
    is uniform over steps (the salt is mixed afresh every step) and
    neighbouring elements get well-spread values, for two integer operations
    per value inside the loop that uses it.
    """
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in range(len(shape) - 1, -1, -1):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(
            stride % 2**32
        )
        stride *= shape[axis]
    return (index ^ _mix(jnp.asarray(salt, jnp.uint32))) * jnp.uint32(0x9E3779B9)


def encode(y: jax.Array, fmt: CodeFormat, noise: jax.Array | None) -> jax.Array:
    """int32 codes of ``y`` (float32, already divided by its block scale).

    ``noise`` (uniform uint32, shaped like ``y``) makes the rounding
    stochastic; None rounds to nearest. Signed formats give two's complement
    codes in ``[-max_code, max_code]``, unsigned ones ``[0, max_code]``.

    The code is read off the float32 bit pattern: adding ``noise`` (or half a
    code) below the kept mantissa bits and shifting them out rounds within a
    binade, and a carry moves to the next binade by itself. Subnormal
    magnitudes :math:`m < T = 2^{1-b}` are first shifted to :math:`m + T`,
    whose binade has exactly the subnormal spacing.
    """
    shift = 23 - fmt.mantissa_bits
    magnitude = jnp.abs(y)
    if fmt.signed:
        threshold = np.float32(2.0 ** (1 - fmt.bias))
        subnormal = magnitude < threshold
        magnitude = jnp.where(subnormal, magnitude + threshold, magnitude)
    bits = jax.lax.bitcast_convert_type(magnitude, jnp.int32)
    if noise is None:
        up = jnp.int32(1 << (shift - 1))
    else:
        up = (noise >> (32 - shift)).astype(jnp.int32)
    code = ((bits + up) >> shift) - fmt._offset
    if fmt.signed:
        code = code - jnp.where(subnormal, 2**fmt.mantissa_bits, 0)
    code = jnp.clip(code, 0, fmt.max_code)
    if fmt.signed:
        code = jnp.where(y < 0, -code, code)
    return code


def decode(code: jax.Array, fmt: CodeFormat) -> jax.Array:
    """The float32 values (before the block scale) of int32 ``code``."""
    shift = 23 - fmt.mantissa_bits
    if not fmt.signed:
        return jax.lax.bitcast_convert_type((code + fmt._offset) << shift, jnp.float32)
    magnitude = jnp.abs(code)
    subnormal = magnitude < 2**fmt.mantissa_bits
    lifted = magnitude + fmt._offset + jnp.where(subnormal, 2**fmt.mantissa_bits, 0)
    value = jax.lax.bitcast_convert_type(lifted << shift, jnp.float32)
    value = value - jnp.where(subnormal, np.float32(2.0 ** (1 - fmt.bias)), 0)
    return jnp.where(code < 0, -value, value)


def _pack(code: jax.Array, fmt: CodeFormat) -> jax.Array:
    """int32 codes as stored: int8/uint8, or two 4-bit codes per uint8.

    Neighbours along the last axis share a byte, the first in the low
    nibble. A signed 4-bit code is stored as sign and magnitude (bit 3 the
    sign), so that a block's largest magnitude is a mask and a maximum away.
    """
    if fmt.bits == 8:
        return code.astype(jnp.int8 if fmt.signed else jnp.uint8)
    code = code.astype(jnp.int32)
    if fmt.signed:
        code = jnp.where(code < 0, 8 - code, code)
    if code.shape[-1] % 2:
        code = jnp.pad(code, [(0, 0)] * (code.ndim - 1) + [(0, 1)])
    pairs = code.reshape(*code.shape[:-1], -1, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).astype(jnp.uint8)


def _unpack(stored: jax.Array, fmt: CodeFormat, length: int) -> jax.Array:
    """The int32 codes of ``stored``, ``length`` of them along the last axis.

    For 4 bits, a broadcast and a shift by position, which XLA fuses into
    whatever reads the codes (a stack or concatenate would be written out).
    """
    if fmt.bits == 8:
        return stored.astype(jnp.int32)
    pairs = jnp.broadcast_to(stored[..., None], (*stored.shape, 2)).astype(jnp.int32)
    shift = jax.lax.broadcasted_iota(jnp.int32, pairs.shape, pairs.ndim - 1) * 4
    code = ((pairs >> shift) & 0xF).reshape(*stored.shape[:-1], -1)[..., :length]
    if fmt.signed:  # sign and magnitude to two's complement
        code = jnp.where(code & 8, 8 - code, code)
    return code


def stored_length(length: int, fmt: CodeFormat) -> int:
    """Bytes along the last axis that ``length`` codes take."""
    return length if fmt.bits == 8 else -(-length // 2)


# Jitted with the format and the sizes static: eager callers (an optimizer
# stepped without jit) then run one compiled program instead of dispatching
# every primitive; inside a jitted step they are inlined.
@functools.partial(jax.jit, static_argnames=("fmt", "block_size"))
def quantize_blockwise(
    x: jax.Array,
    fmt: CodeFormat,
    block_size: int,
    *,
    bound: jax.Array | None = None,
    noise: jax.Array | None = None,
    runtime: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""``(codes, exponents)`` of ``x`` (at least 1-D), block by block.

    ``bound`` is an upper bound of each block's :math:`|x|`, shaped
    ``(*x.shape[:-1], blocks)``; None computes the exact maximum. ``noise``
    makes the rounding stochastic (see :func:`rounding_noise`). ``runtime``,
    a scalar known only when the program runs (the step count), lets the
    per-block exponents be computed once per block under jit.

    >>> import jax.numpy as jnp
    >>> fmt = FORMATS[8, True]
    >>> codes, exps = quantize_blockwise(jnp.array([0.5, -2.0, 0.0, 1.0]), fmt, 4)
    >>> exps
    Array([1], dtype=int8)
    >>> dequantize_blockwise(codes, exps, fmt, 4, 4)
    Array([ 0.5, -2. ,  0. ,  1. ], dtype=float32)
    """
    x = x.astype(jnp.float32)
    length = x.shape[-1]
    if bound is None:
        bound = jnp.max(jnp.abs(_blocked(x, block_size)), axis=-1)
    exponents, inverse = _per_block(
        lambda b: (e := block_exponents(b, fmt), _inverse_scale(e)), bound, runtime
    )
    y = x * per_value(inverse, block_size, length)
    code = encode(y, fmt, noise)
    if fmt.bits == 4:
        # Pack in a pass of its own: fused into the encode, the pairing's
        # index arithmetic keeps the loop from vectorizing (5x slower).
        code = code.astype(jnp.int8)
        return _per_block(lambda c: _pack(c, fmt), code, runtime), exponents
    return _pack(code, fmt), exponents


@functools.partial(jax.jit, static_argnames=("fmt", "block_size", "length"))
def dequantize_blockwise(
    codes: jax.Array,
    exponents: jax.Array,
    fmt: CodeFormat,
    block_size: int,
    length: int,
    runtime: jax.Array | None = None,
) -> jax.Array:
    """The float32 values that :func:`quantize_blockwise` encoded.

    ``runtime`` as in :func:`quantize_blockwise`: the block scales are then
    computed once per block.
    """
    values = decode(_unpack(codes, fmt, length), fmt)
    scale = _per_block(exponent_scale, exponents, runtime)
    return values * per_value(scale, block_size, length)


@functools.partial(jax.jit, static_argnames=("fmt", "block_size"))
def stored_abs_max(
    codes: jax.Array, exponents: jax.Array, fmt: CodeFormat, block_size: int
) -> jax.Array:
    r"""Each block's exact :math:`\max |x|` of the values ``codes`` hold.

    Codes are monotone in the value, so for 8-bit codes this is two
    reductions of the stored bytes as they are, plus a decode per block.
    """
    if fmt.bits == 8 and fmt.signed:  # codes lie in [-127, 127]: -min cannot wrap
        largest = blocked_abs_max(codes, block_size).astype(jnp.int32)
    elif fmt.bits == 8:
        largest = jnp.max(_blocked(codes, block_size), axis=-1).astype(jnp.int32)
    else:
        largest = _packed_block_max(codes, fmt, block_size)
    return decode(largest, fmt) * exponent_scale(exponents)


def _packed_block_max(codes: jax.Array, fmt: CodeFormat, block_size: int):
    """Each block's largest 4-bit magnitude code, from the packed bytes.

    The magnitudes of both nibbles are first folded, eight bytes apart,
    into an array an eighth the size by element-wise maxima (which XLA fuses
    into one pass over the bytes), and that small array is then reduced.
    """
    magnitude = 0x7 if fmt.signed else 0xF
    per_byte = jnp.maximum(codes & magnitude, (codes >> 4) & magnitude)
    rows = _blocked(per_byte, block_size // 2)  # (..., blocks, bytes a block)
    folds = min(8, rows.shape[-1])
    parts = rows.reshape(*rows.shape[:-1], folds, -1)
    folded = parts[..., 0, :]
    for k in range(1, folds):
        folded = jnp.maximum(folded, parts[..., k, :])
    return jnp.max(folded, axis=-1).astype(jnp.int32)
