"""How optimizer state is stored: one place for every transform's moments.

A transform never casts its own state. It asks a :class:`Storage` for its
starting moments at ``init``, :meth:`~Storage.read` s each stored leaf into
the compute dtype (float32 or wider), updates it, and :meth:`~Storage.write` s
it back. The algorithm does not know how its moments are stored, so every
transform gets every storage kind. A ``mu_dtype``/``nu_dtype`` argument picks
one (:func:`resolve_storage`):

- a floating dtype (``mu_dtype=jnp.bfloat16``), or None to follow the
  parameter, as optax does: :class:`FloatStorage`;
- :class:`StochasticRounding`: bfloat16 written with stochastic rounding:
  :class:`StochasticStorage`;
- :class:`Rounded`: a floating dtype whose step is taken from the stored
  (rounded) moments, as PyTorch does: :class:`RoundedStorage`;
- ``"int8"``, ``"int4"`` or :class:`Quantized`: block-wise low-bit float codes
  with one int8 exponent per block (:mod:`adamx.quantization`):
  :class:`CodeStorage`. The stored leaf is a :class:`QuantizedArray` of plain
  arrays, so jit, ``eval_shape``, checkpoints and sharding need no special
  case.

Each kind owns its ``init``/``read``/``write``/``mismatch`` and derives its
own rounding noise from the step, the leaf and the moment's slot.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from adamx import numerics, quantization
from adamx._validation import caller_name, check_int

__all__ = [
    "CodeStorage",
    "FloatStorage",
    "Quantized",
    "QuantizedArray",
    "Rounded",
    "RoundedStorage",
    "StochasticRounding",
    "StochasticStorage",
    "Storage",
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
    """Block-wise low-bit storage of a moment: 8 or 4 bits per value.

    Pass it (or the string ``"int8"`` or ``"int4"`` for the defaults) as
    ``mu_dtype`` or ``nu_dtype``. A moment then costs ``bits / 8`` bytes per
    value plus one byte per ``block_size`` values along the last axis: 1.008
    bytes per value for 8 bits and 0.508 for 4 bits at the default block size,
    against 4 in float32. The codes and their error bounds are described in
    :mod:`adamx.quantization`.

    Attributes:
      bits: 8 or 4.
      block_size: values per block, a positive even power of two.
      min_size: leaves with fewer values stay float32, where the saving is
        negligible and the relative error of a few bits is not.
      seed: the base of the stochastic rounding noise.

    Example:
      >>> import adamx
      >>> tx = adamx.adam(1e-3, mu_dtype=adamx.Quantized(bits=4), nu_dtype="int8")
    """

    bits: int = 8
    block_size: int = 128
    min_size: int = 4096
    seed: int = 0

    def __post_init__(self):
        if self.bits not in (4, 8) or isinstance(self.bits, bool):
            raise ValueError(f"Quantized(bits={self.bits!r}): bits must be 8 or 4")
        size = self.block_size
        check_int("Quantized", "block_size", size, 2)
        if size & (size - 1):
            raise ValueError(
                f"Quantized(block_size={size!r}): block_size must be a positive "
                "power of two"
            )
        check_int("Quantized", "min_size", self.min_size, 0)
        check_int("Quantized", "seed", self.seed, 0)


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


@dataclasses.dataclass(frozen=True)
class Rounded:
    r"""Moments stored in ``dtype``, and the step taken from the stored values.

    With a plain narrow dtype (``mu_dtype=jnp.bfloat16``) adamx does what
    optax does: the step uses the new moments in float32, and only the state
    is rounded. That step reads the *old* stored moments after the new ones
    are written over them, so a donated, jitted step must first copy the old
    moments (on the CPU: 4 bytes/param of temporaries for bfloat16 Adam and a
    slower step). ``Rounded(jnp.bfloat16)`` takes the step from the moments as
    stored, PyTorch's behaviour for low-precision state: the update is
    :math:`u(g, \operatorname{round}(m_t), \operatorname{round}(v_t))`, the
    moments are written in place and nothing is copied. Each step then
    differs from optax's ``mu_dtype`` result by the rounding of the moments
    (a relative :math:`2^{-9}` per moment for bfloat16).

    Attributes:
      dtype: a floating dtype.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> bf16 = adamx.Rounded(jnp.bfloat16)
      >>> tx = adamx.adam(1e-3, mu_dtype=bf16, nu_dtype=bf16)
    """

    dtype: Any = jnp.bfloat16


class QuantizedArray(NamedTuple):
    """A stored low-bit moment leaf.

    Attributes:
      codes: the codes: int8 (signed moments) or uint8, shaped like the
        parameter; for 4 bits, uint8 with two codes per byte along the last
        axis.
      scales: int8, ``(*shape[:-1], blocks)``: each block's exponent
        :math:`E`, its scale being :math:`2^E`.
    """

    codes: jax.Array
    scales: jax.Array


def _salt(seed: int, count: jax.Array, leaf: jax.Array, slot: int) -> jax.Array:
    """A scalar uint32 from (seed, step, leaf, slot): the rounding noise's salt."""
    step = jnp.asarray(count, jnp.uint32) * jnp.uint32(0x9E3779B9)
    place = jnp.asarray(leaf, jnp.uint32) * jnp.uint32(0xC2B2AE35)
    return step ^ place ^ jnp.uint32((seed * 0x85EBCA6B + slot) % 2**32)


@dataclasses.dataclass(frozen=True)
class Storage:
    """Storage of one moment: the interface every kind implements.

    Attributes:
      real: True for moments of :math:`|g|^2`, which are real even for complex
        parameters and never negative.
    """

    real: bool

    block_size = None  # kinds that store per-block codes set this
    step_from_stored = False  # True: the step reads the moments as stored

    def coded(self, shape: tuple[int, ...]) -> bool:
        """True when a leaf of ``shape`` is stored as block codes."""
        return False

    def init(self, param: jax.Array, initial_value: ArrayLike = 0.0) -> Any:
        """``initial_value`` (default 0) shaped like ``param``, as stored."""
        # Computed from ``param`` rather than a constant: under jit the compiler
        # then gives the moment the parameter's sharding (a constant would be
        # replicated). |p| * 0 is +0 for every finite p; non-finite p count as 0.
        finite = jnp.where(jnp.isfinite(param), param, 0)
        dtype = self._init_dtype(param)
        return (jnp.abs(finite) * 0).astype(dtype) + jnp.asarray(initial_value, dtype)

    def _init_dtype(self, param: jax.Array) -> np.dtype:
        raise NotImplementedError

    def read(
        self, stored: Any, shape: tuple[int, ...], count: jax.Array | None = None
    ) -> jax.Array:
        """The stored leaf in its compute dtype (``count``: the step, if known)."""
        return stored.astype(numerics.compute_dtype(stored.dtype))

    def write(
        self,
        value: jax.Array,
        stored: Any,
        *,
        count: jax.Array,
        leaf: int,
        slot: int,
        bound: jax.Array | None = None,
    ) -> Any:
        """``value`` stored like the leaf it replaces.

        ``count``, ``leaf`` and ``slot`` seed stochastic rounding; ``bound``
        bounds each block's :math:`|value|` for block codes.
        """
        return value.astype(stored.dtype)

    def block_abs_max(
        self, stored: Any, shape: tuple[int, ...], block_size: int
    ) -> jax.Array:
        r"""Each block's :math:`\max |x|` of the stored values, cheaply."""
        return quantization.blocked_abs_max(stored, block_size).astype(jnp.float32)

    def mismatch(self, stored: Any, shape: tuple[int, ...]) -> str | None:
        """Why ``stored`` cannot be this storage's leaf for an update of ``shape``.

        None when it can. Catches a state saved for other parameters or built
        with another storage, before it turns into a broadcasting error.
        """
        if _as_codes(stored) is not None:
            return (
                "holds low-bit codes but this transform stores a plain array there "
                "(mu_dtype/nu_dtype differ from the ones the state was built with)"
            )
        if tuple(jnp.shape(stored)) != tuple(shape):
            return f"is shaped {tuple(jnp.shape(stored))}, the update {tuple(shape)}"
        return None


@dataclasses.dataclass(frozen=True)
class FloatStorage(Storage):
    """A floating dtype, or None to follow each parameter leaf (optax's rule).

    Attributes:
      dtype: the declared floating dtype, or None.
    """

    dtype: np.dtype | None = None

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

    def _init_dtype(self, param):
        return self.dtype_for(param.dtype)


@dataclasses.dataclass(frozen=True)
class StochasticStorage(FloatStorage):
    """bfloat16 written with stochastic rounding (see :class:`StochasticRounding`).

    Attributes:
      seed: the base of the rounding noise.
    """

    seed: int = 0

    def write(self, value, stored, *, count, leaf, slot, bound=None):
        """bfloat16 leaves are written with stochastic rounding."""
        if stored.dtype != jnp.bfloat16:
            return value.astype(stored.dtype)
        salt = _salt(self.seed, count, leaf, slot)
        return _round_stochastically(
            value, quantization.rounding_noise(value.shape, salt)
        )


@dataclasses.dataclass(frozen=True)
class RoundedStorage(FloatStorage):
    """A floating dtype; the step reads the stored moments (:class:`Rounded`)."""

    step_from_stored = True


def _round_stochastically(value: jax.Array, noise: jax.Array) -> jax.Array:
    """float32 to bfloat16, rounding up with the probability of the dropped bits.

    ``noise``: uniform uint32 (:func:`adamx.quantization.rounding_noise`), a
    few integer operations per value where a counter-based generator such as
    ``jax.random.bits`` costs tens and is written out in full.
    """
    value = value.astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(value, jnp.uint32)
    noise = noise >> 16
    upper = jnp.uint32(0xFFFF0000)
    rounded = jax.lax.bitcast_convert_type((bits + noise) & upper, jnp.float32)
    # inf and NaN keep their bits; adding noise could turn inf into NaN.
    return jnp.where(jnp.isfinite(value), rounded, value).astype(jnp.bfloat16)


def _as_codes(stored: Any) -> QuantizedArray | None:
    """``stored`` as a QuantizedArray, or None for a plain array.

    Frameworks that keep optimizer state in their own containers (Flax NNX
    turns each NamedTuple into a mapping) hand back the same two arrays under
    the keys ``codes`` and ``scales``; those are accepted as well.
    """
    if isinstance(stored, QuantizedArray):
        return stored
    keys = getattr(stored, "keys", None)
    if keys is not None and set(keys()) == {"codes", "scales"}:
        unwrap = lambda x: getattr(x, "value", x)  # noqa: E731 (NNX variables)
        return QuantizedArray(unwrap(stored["codes"]), unwrap(stored["scales"]))
    return None


@dataclasses.dataclass(frozen=True)
class CodeStorage(Storage):
    """Block-wise low-bit codes (:class:`Quantized`) for large leaves, float32 below.

    Attributes:
      config: the user's :class:`Quantized` options.
    """

    config: Quantized = Quantized()

    @property
    def format(self) -> quantization.CodeFormat:
        """The code format: signed for first moments, unsigned for real ones."""
        return quantization.FORMATS[self.config.bits, not self.real]

    @property
    def block_size(self) -> int:  # type: ignore[override]
        """Values per block."""
        return self.config.block_size

    def coded(self, shape):
        """Leaves of at least ``min_size`` values, of one axis or more."""
        return len(shape) >= 1 and int(np.prod(shape)) >= self.config.min_size

    def init(self, param, initial_value=0.0):
        """Codes for large leaves; float32 (complex64 for a complex m) below."""
        if not self.coded(param.shape):
            return super().init(param, initial_value)
        if jnp.issubdtype(param.dtype, jnp.complexfloating):
            raise TypeError("low-bit state holds real moments only; complex leaf")
        value = super().init(param, initial_value)
        return QuantizedArray(
            *quantization.quantize_blockwise(value, self.format, self.block_size)
        )

    def _init_dtype(self, param):
        # Leaves too small for codes keep float32 (complex64 for a complex m).
        return FloatStorage(self.real, np.dtype(np.float32)).dtype_for(param.dtype)

    def read(self, stored, shape, count=None):
        """Decoded to float32."""
        codes = _as_codes(stored)
        if codes is None:
            return super().read(stored, shape)
        return quantization.dequantize_blockwise(
            codes.codes, codes.scales, self.format, self.block_size, shape[-1], count
        )

    def write(self, value, stored, *, count, leaf, slot, bound=None):
        """Encoded with stochastic rounding, blocks sized from ``bound``."""
        if _as_codes(stored) is None:
            return value.astype(stored.dtype)
        noise = quantization.rounding_noise(
            value.shape, _salt(self.config.seed, count, leaf, slot)
        )
        return QuantizedArray(
            *quantization.quantize_blockwise(
                value,
                self.format,
                self.block_size,
                bound=bound,
                noise=noise,
                runtime=count,
            )
        )

    def block_abs_max(self, stored, shape, block_size):
        """Exact, from the stored codes (two reductions of the bytes)."""
        codes = _as_codes(stored)
        if codes is None:
            return super().block_abs_max(stored, shape, block_size)
        return quantization.stored_abs_max(
            codes.codes, codes.scales, self.format, block_size
        )

    def mismatch(self, stored, shape):
        """Also checks the code layout, the block size and the format version."""
        codes = _as_codes(stored)
        if codes is None:
            if self.coded(shape):
                return (
                    "holds a plain array but this transform stores low-bit codes "
                    "there (mu_dtype/nu_dtype differ from the ones the state was "
                    "built with)"
                )
            return super().mismatch(stored, shape)
        if not self.coded(shape):
            return (
                "holds low-bit codes but this transform stores a plain array there "
                "(mu_dtype/nu_dtype differ from the ones the state was built with)"
            )
        fmt = self.format
        expected = (*shape[:-1], quantization.stored_length(shape[-1], fmt))
        if tuple(codes.codes.shape) != expected:
            return (
                f"holds {fmt.bits}-bit codes shaped {tuple(codes.codes.shape)}, "
                f"not {expected} for the update {tuple(shape)}"
            )
        blocks = quantization.num_blocks(shape[-1], self.block_size)
        expected = (*shape[:-1], blocks)
        if tuple(codes.scales.shape) != expected:
            return (
                f"has scales shaped {tuple(codes.scales.shape)}, not {expected} "
                f"(block_size {self.block_size})"
            )
        if jnp.result_type(codes.scales) != jnp.int8:
            return (
                f"has {jnp.result_type(codes.scales)} scales: it was saved by adamx "
                "0.2, whose 8-bit format 0.3 replaced; start the optimizer state "
                "afresh (tx.init) and keep the parameters"
            )
        return None


def resolve_storage(
    caller: str, arg: str, value: Any, *, real: bool = False
) -> Storage:
    """Validates a ``mu_dtype``/``nu_dtype`` argument once, when a transform is built.

    Accepts None, a floating dtype, ``"int8"``, ``"int4"``, :class:`Quantized`,
    :class:`StochasticRounding` or :class:`Rounded`.

    For a first moment a dtype names a precision, real or complex alike: with
    ``mu_dtype=jnp.float32`` or ``jnp.complex64``, a complex parameter's
    :math:`m` is stored as complex64 and a real parameter's as float32 (a real
    parameter's moment is real; optax would store it as complex). A second
    moment is real for every parameter, so ``nu_dtype`` refuses complex dtypes.

    Raises:
      ValueError: naming the call, the argument and the value, when the value
        is none of those.
    """
    caller = caller_name(caller)
    if value is None:
        return FloatStorage(real)
    if isinstance(value, Quantized):
        return CodeStorage(real, value)
    if isinstance(value, str) and value in ("int8", "int4"):
        return CodeStorage(real, Quantized(bits=int(value[3:])))
    if isinstance(value, StochasticRounding):
        return StochasticStorage(real, np.dtype(jnp.bfloat16), value.seed)
    rounded = isinstance(value, Rounded)
    try:
        dtype = np.dtype(jnp.dtype(value.dtype if rounded else value))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{caller}({arg}={value!r}): unknown dtype; use a floating dtype, "
            '"int8", "int4", adamx.Quantized(...) or adamx.StochasticRounding(...)'
        ) from err
    if jnp.issubdtype(dtype, jnp.complexfloating) and not rounded:
        if real:
            raise ValueError(
                f"{caller}({arg}={value!r}): this moment is real (it tracks "
                "|g|^2), also for complex parameters; give its precision as a "
                f"real dtype, {jnp.finfo(dtype).dtype.name}"
            )
        # A complex dtype names a precision: complex parameters store their
        # moment in it, real parameters in its real counterpart.
        dtype = np.dtype(jnp.finfo(dtype).dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{caller}({arg}={value!r}): state must be stored in a floating dtype "
            'such as float32 or bfloat16, or as "int8" or "int4"'
        )
    return (RoundedStorage if rounded else FloatStorage)(real, dtype)


def moment_storages(
    caller: str, mu_dtype: Any, nu_dtype: Any
) -> tuple[Storage, Storage]:
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
    >>> int4 = adamx.scale_by_adam(mu_dtype="int4", nu_dtype="int4").init(params)
    >>> [round(state_nbytes(s) / params.size, 3) for s in (fp32, int8, int4)]
    [8.0, 2.016, 1.016]
    """
    return sum(
        int(np.prod(np.shape(x))) * np.dtype(jnp.result_type(x)).itemsize
        for x in jax.tree.leaves(state)
    )
