"""How optimizer state is stored: one place for every transform's moments.

A transform never casts its own state. It asks a :class:`StateStorage` for
zeros at ``init``, :meth:`~StateStorage.read` s the stored leaf into the
compute dtype (float32 or wider), updates it, and
:meth:`~StateStorage.write` s it back. The algorithm therefore does not know
how its moments are stored, and a new storage format changes this module
alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from adamx import numerics
from adamx._validation import caller_name

__all__ = ["StateStorage", "resolve_storage"]

_COMPLEX_OF = {
    np.dtype(np.float32): np.dtype(np.complex64),
    np.dtype(np.float64): np.dtype(np.complex128),
}


@dataclasses.dataclass(frozen=True)
class StateStorage:
    """Storage of one moment: its dtype, or the parameter's when ``dtype`` is None.

    Attributes:
      dtype: the declared floating dtype, or None to follow each parameter
        leaf's dtype (optax's convention).
      real: True for moments of :math:`|g|^2`, which are real even for complex
        parameters and are then stored in the parameter's real dtype.
    """

    dtype: np.dtype | None
    real: bool = False

    def dtype_for(self, param_dtype: DTypeLike) -> np.dtype:
        """The stored dtype for a parameter of ``param_dtype``."""
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

    def init(self, param: jax.Array, initial_value: ArrayLike = 0.0) -> jax.Array:
        """``initial_value`` (default 0) shaped like ``param``, in the stored dtype.

        ``initial_value`` is a scalar: a number, array or tracer. Most moments
        start at zero; Yogi's start at a small positive constant.
        """
        return jnp.full_like(param, initial_value, dtype=self.dtype_for(param.dtype))

    def read(self, stored: jax.Array) -> jax.Array:
        """The stored leaf widened to its compute dtype."""
        return stored.astype(numerics.compute_dtype(stored.dtype))

    def write(self, value: jax.Array, stored: jax.Array) -> jax.Array:
        """``value`` in the dtype of the leaf it replaces."""
        return value.astype(stored.dtype)


def resolve_storage(
    caller: str, arg: str, value: Any, *, real: bool = False
) -> StateStorage:
    """Validates a ``mu_dtype``/``nu_dtype`` argument once, when a transform is built.

    Raises:
      ValueError: naming the call, the argument and the value, when the value
        is not a floating dtype.
    """
    caller = caller_name(caller)
    if value is None:
        return StateStorage(None, real)
    try:
        dtype = np.dtype(jnp.dtype(value))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{caller}({arg}={value!r}): unknown dtype") from err
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{caller}({arg}={value!r}): state must be stored in a floating dtype "
            "such as float32 or bfloat16"
        )
    return StateStorage(dtype, real)
