"""How optimizer state is stored: one place for every transform's moments.

A transform never casts its own state. It asks a :class:`StateStorage` for
its starting moments at ``init``, :meth:`~StateStorage.read` s each stored
leaf into the compute dtype (float32 or wider), updates it, and
:meth:`~StateStorage.write` s it back. The algorithm does not know how its
moments are stored, so every transform gets every storage kind:

- a floating dtype (``mu_dtype=jnp.bfloat16``), or None to follow the
  parameter, as optax does;
- ``"int8"`` or :class:`Quantized`: block-wise dynamic 8-bit codes with one
  float32 scale per block (:mod:`adamx.quantization`); the stored leaf is a
  :class:`QuantizedArray` of plain arrays, so jit, ``eval_shape``,
  checkpoints and sharding need no special case;
- :class:`StochasticRounding`: bfloat16 written with stochastic rounding.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from adamx import numerics, quantization
from adamx._validation import caller_name

__all__ = [
    "Quantized",
    "QuantizedArray",
    "StateStorage",
    "StochasticRounding",
    "moment_storages",
    "resolve_storage",
    "state_nbytes",
]

_COMPLEX_OF = {
    np.dtype(np.float32): np.dtype(np.complex64),
    np.dtype(np.float64): np.dtype(np.complex128),
}


@dataclasses.dataclass(frozen=True)
class Quantized:
    """8-bit block-wise dynamic quantization of a moment (Dettmers et al. 2022).

    Pass it (or the string ``"int8"`` for the defaults) as ``mu_dtype`` or
    ``nu_dtype``. A moment then costs one byte per value plus a float32 scale
    per ``block_size`` values along the last axis: 1.016 bytes per value at
    the default block size, against 4 in float32.

    Attributes:
      block_size: values per block, a positive power of two.
      min_size: leaves with fewer values stay float32, where the saving is
        negligible and the relative error of 8 bits is not.

    Example:
      >>> import adamx
      >>> tx = adamx.adam(1e-3, mu_dtype=adamx.Quantized(), nu_dtype="int8")
    """

    block_size: int = 256
    min_size: int = 4096

    def __post_init__(self):
        size = self.block_size
        if (
            not isinstance(size, int)
            or isinstance(size, bool)
            or size <= 0
            or size & (size - 1)
        ):
            raise ValueError(
                f"Quantized(block_size={size!r}): block_size must be a positive "
                "power of two"
            )
        min_size = self.min_size
        if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 0:
            raise ValueError(
                f"Quantized(min_size={self.min_size!r}): min_size must be an int >= 0"
            )


@dataclasses.dataclass(frozen=True)
class StochasticRounding:
    r"""bfloat16 storage written with stochastic rounding.

    Round-to-nearest makes a bfloat16 moving average stall: once
    :math:`(1-\beta)|x - m|` is below half a bfloat16 ulp of :math:`m` (about
    :math:`2^{-9}|m|`), every update rounds back to :math:`m`, so with
    :math:`\beta_2 = 0.999` the second moment stops following the gradient.
    Stochastic rounding rounds up with probability equal to the discarded
    fraction, so each stored value is unbiased and the average keeps moving,
    at the cost of noise of up to one ulp per step. The randomness is
    derived from ``seed``, the step and the leaf, so a run is reproducible
    and the state needs no key.

    Attributes:
      seed: the base of the rounding noise.
    """

    seed: int = 0


class QuantizedArray(NamedTuple):
    """A stored 8-bit moment leaf.

    Attributes:
      codes: uint8, shaped like the parameter: indices into the code map.
      scales: float32, ``(*shape[:-1], blocks)``: each block's absolute maximum.
    """

    codes: jax.Array
    scales: jax.Array


@dataclasses.dataclass(frozen=True)
class StateStorage:
    """Storage of one moment.

    Attributes:
      dtype: the declared floating dtype, or None to follow each parameter
        leaf's dtype (optax's convention).
      real: True for moments of :math:`|g|^2`, which are real even for complex
        parameters (and never negative, which picks the unsigned 8-bit map).
      quantized: 8-bit storage for large leaves, or None.
      stochastic: stochastic rounding for bfloat16, or None.
    """

    dtype: np.dtype | None
    real: bool = False
    quantized: Quantized | None = None
    stochastic: StochasticRounding | None = None

    def dtype_for(self, param_dtype: DTypeLike) -> np.dtype:
        """The stored floating dtype for a parameter of ``param_dtype``."""
        param_dtype = np.dtype(param_dtype)
        is_complex = jnp.issubdtype(param_dtype, jnp.complexfloating)
        if self.dtype is None:
            return np.dtype(jnp.finfo(param_dtype).dtype) if self.real else param_dtype
        if is_complex and not self.real:
            if self.dtype not in _COMPLEX_OF:
                raise TypeError(
                    f"a complex parameter's first moment cannot be stored as "
                    f"{self.dtype.name}: use float32, float64 or None"
                )
            return _COMPLEX_OF[self.dtype]
        return self.dtype

    def _quantizes(self, param: jax.Array) -> bool:
        q = self.quantized
        return q is not None and param.ndim >= 1 and param.size >= q.min_size

    def init(self, param: jax.Array, initial_value: ArrayLike = 0.0) -> Any:
        """``initial_value`` (default 0) shaped like ``param``, as stored."""
        if self._quantizes(param) and jnp.issubdtype(param.dtype, jnp.complexfloating):
            raise TypeError("8-bit state holds real moments only; complex leaf")
        dtype = jnp.float32 if self._quantizes(param) else self.dtype_for(param.dtype)
        # Computed from ``param`` rather than a constant: under jit the compiler
        # then gives the moment the parameter's sharding (a constant would be
        # replicated), and does not fold the 8-bit quantization at compile time.
        # |p| * 0 is +0 for every finite p; non-finite p count as 0.
        finite = jnp.where(jnp.isfinite(param), param, 0)
        value = (jnp.abs(finite) * 0).astype(dtype) + jnp.asarray(initial_value, dtype)
        if self._quantizes(param):
            return QuantizedArray(*self._quantize(value))
        return value

    def _code_map(self) -> jax.Array:
        return quantization.dynamic_code_map(signed=not self.real)

    def _quantize(self, value: jax.Array) -> tuple[jax.Array, jax.Array]:
        return quantization.quantize_blockwise(
            value, self._code_map(), self.quantized.block_size
        )

    @staticmethod
    def _codes_and_scales(stored: Any) -> QuantizedArray | None:
        """``stored`` as a QuantizedArray, or None for a plain array.

        Frameworks that keep optimizer state in their own containers (Flax NNX
        turns each NamedTuple into a mapping) hand back the same two arrays
        under the keys ``codes`` and ``scales``; those are accepted as well.
        """
        if isinstance(stored, QuantizedArray):
            return stored
        keys = getattr(stored, "keys", None)
        if keys is not None and set(keys()) == {"codes", "scales"}:
            codes, scales = stored["codes"], stored["scales"]
            unwrap = lambda x: getattr(x, "value", x)  # noqa: E731 (NNX variables)
            return QuantizedArray(unwrap(codes), unwrap(scales))
        return None

    def mismatch(self, stored: Any, shape: tuple[int, ...]) -> str | None:
        """Why ``stored`` cannot be this storage's leaf for an update of ``shape``.

        None when it can. Catches a state saved for other parameters or built
        with another storage, before it turns into a broadcasting error.
        """
        as_codes = self._codes_and_scales(stored)
        quantized = as_codes is not None
        stored = as_codes if quantized else stored
        held = stored.codes.shape if quantized else jnp.shape(stored)
        if tuple(held) != tuple(shape):
            return f"is shaped {tuple(held)}, the update {tuple(shape)}"
        expects_codes = self.quantized is not None and len(shape) >= 1
        expects_codes = expects_codes and int(np.prod(shape)) >= self.quantized.min_size
        if quantized != expects_codes:
            kinds = ("8-bit codes", "a plain array")
            return (
                f"holds {kinds[not quantized]} but this transform stores "
                f"{kinds[not expects_codes]} there (mu_dtype/nu_dtype differ from "
                "the ones the state was built with)"
            )
        if quantized:
            blocks = quantization.num_blocks(shape[-1], self.quantized.block_size)
            expected = (*shape[:-1], blocks)
            if tuple(stored.scales.shape) != expected:
                return (
                    f"has scales shaped {tuple(stored.scales.shape)}, not {expected} "
                    f"(block_size {self.quantized.block_size})"
                )
        return None

    def read(self, stored: Any) -> jax.Array:
        """The stored leaf in its compute dtype (float32 for 8-bit leaves)."""
        stored = self._codes_and_scales(stored) or stored
        if isinstance(stored, QuantizedArray):
            return quantization.dequantize_blockwise(
                stored.codes, stored.scales, self._code_map(), self.quantized.block_size
            )
        return stored.astype(numerics.compute_dtype(stored.dtype))

    def write(self, value: jax.Array, stored: Any, key: jax.Array | None = None) -> Any:
        """``value`` stored like the leaf it replaces.

        ``key`` seeds stochastic rounding, when this storage uses it.
        """
        if self._codes_and_scales(stored) is not None:
            return QuantizedArray(*self._quantize(value))
        if self.stochastic is not None and stored.dtype == jnp.bfloat16:
            return _round_stochastically(value, key)
        return value.astype(stored.dtype)


def _round_stochastically(value: jax.Array, key: jax.Array) -> jax.Array:
    """float32 to bfloat16, rounding up with the probability of the dropped bits."""
    value = value.astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(value, jnp.uint32)
    noise = jax.random.bits(key, value.shape, jnp.uint32) >> 16
    upper = jnp.uint32(0xFFFF0000)
    rounded = jax.lax.bitcast_convert_type((bits + noise) & upper, jnp.float32)
    # inf and NaN keep their bits; adding noise could turn inf into NaN.
    return jnp.where(jnp.isfinite(value), rounded, value).astype(jnp.bfloat16)


def resolve_storage(
    caller: str, arg: str, value: Any, *, real: bool = False
) -> StateStorage:
    """Validates a ``mu_dtype``/``nu_dtype`` argument once, when a transform is built.

    Accepts None, a floating dtype, ``"int8"``, :class:`Quantized` or
    :class:`StochasticRounding`.

    Raises:
      ValueError: naming the call, the argument and the value, when the value
        is none of those.
    """
    caller = caller_name(caller)
    if value is None:
        return StateStorage(None, real)
    if isinstance(value, Quantized):
        return StateStorage(np.dtype(np.float32), real, quantized=value)
    if isinstance(value, str) and value == "int8":
        return StateStorage(np.dtype(np.float32), real, quantized=Quantized())
    if isinstance(value, StochasticRounding):
        return StateStorage(np.dtype(jnp.bfloat16), real, stochastic=value)
    try:
        dtype = np.dtype(jnp.dtype(value))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{caller}({arg}={value!r}): unknown dtype; use a floating dtype, "
            '"int8", adamx.Quantized(...) or adamx.StochasticRounding(...)'
        ) from err
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{caller}({arg}={value!r}): state must be stored in a floating dtype "
            'such as float32 or bfloat16, or as "int8"'
        )
    return StateStorage(dtype, real)


def moment_storages(
    caller: str, mu_dtype: Any, nu_dtype: Any
) -> tuple[StateStorage, StateStorage]:
    """The storages of a first moment and a (real) second moment, validated."""
    return (
        resolve_storage(caller, "mu_dtype", mu_dtype),
        resolve_storage(caller, "nu_dtype", nu_dtype, real=True),
    )


def state_nbytes(state: Any) -> int:
    """Bytes held by the arrays of an optimizer state (or any pytree).

    >>> import jax.numpy as jnp, adamx
    >>> params = jnp.zeros((64, 1024))
    >>> fp32 = adamx.scale_by_adam().init(params)
    >>> int8 = adamx.scale_by_adam(mu_dtype="int8", nu_dtype="int8").init(params)
    >>> state_nbytes(fp32) / params.size, round(state_nbytes(int8) / params.size, 3)
    (8.0, 2.031)
    """
    return sum(
        int(np.prod(np.shape(x))) * np.dtype(jnp.result_type(x)).itemsize
        for x in jax.tree.leaves(state)
    )
