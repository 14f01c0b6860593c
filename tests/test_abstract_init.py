"""``init`` on parameters that do not exist yet, and complex ``mu_dtype``.

``tx.init`` given ``jax.ShapeDtypeStruct`` leaves returns the state that
``jax.eval_shape(tx.init, params)`` describes, as ``ShapeDtypeStruct`` leaves
with the shardings of :func:`adamx.state_shardings`, for every public
transform and every storage kind. (With 8 devices the shardings are checked
by ``sharding_check.py``.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from catalogue import VARIANTS
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adamx

PARAMS = {
    "w": jax.ShapeDtypeStruct((64, 256), jnp.float32),
    "b": jax.ShapeDtypeStruct((256,), jnp.bfloat16),
    "s": jax.ShapeDtypeStruct((), jnp.float32),
}
STORAGES = {
    "default": None,
    "bfloat16": jnp.bfloat16,
    "stochastic": adamx.StochasticRounding(),
    "rounded": adamx.Rounded(),
    "int8": adamx.Quantized(bits=8, min_size=128),
    "int4": adamx.Quantized(bits=4, min_size=128),
}


def _concrete(params):
    return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), params)


def _described(tree):
    return [(tuple(x.shape), np.dtype(x.dtype)) for x in jax.tree.leaves(tree)]


def _build(variant, storage):
    takes_storage = variant.entry.takes_storage
    if storage is not None and not takes_storage:
        pytest.skip(f"{variant.name} stores no moments")
    if isinstance(storage, adamx.Rounded) and not variant.entry.rounded_storage:
        # Its step needs the old moment (documented); tested in test_storage.
        pytest.skip(f"{variant.name} refuses Rounded storage")
    kwargs = {"mu_dtype": storage, "nu_dtype": storage} if takes_storage else {}
    return variant.build(**kwargs)


# Every variant with its default storage, and every storage kind with one
# variant of each family (the storage code is shared, the state layout is not).
_FIRST_OF_FAMILY = list(
    {v.family: v for v in reversed(VARIANTS) if not v.options}.values()
)
CASES = [(v, "default") for v in VARIANTS] + [
    (v, kind) for v in _FIRST_OF_FAMILY for kind in STORAGES if kind != "default"
]


@pytest.mark.parametrize(
    ("variant", "storage"), CASES, ids=[f"{v.id}-{kind}" for v, kind in CASES]
)
def test_abstract_init_is_eval_shape(variant, storage):
    tx = _build(variant, STORAGES[storage])
    planned = tx.init(PARAMS)
    expected = jax.eval_shape(tx.init, _concrete(PARAMS))
    assert jax.tree.structure(planned) == jax.tree.structure(expected)
    assert _described(planned) == _described(expected)
    # Nothing was computed: every leaf of adamx's own state is abstract.
    assert any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(planned))
    # And the plan is a state: it can be filled with zeros and updated.
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), planned)
    jax.eval_shape(tx.update, _concrete(PARAMS), zeros, _concrete(PARAMS))


def test_abstract_init_keeps_the_parameters_shardings():
    mesh = jax.make_mesh((1,), ("model",))
    sharding = NamedSharding(mesh, P(None, "model"))
    params = {"w": jax.ShapeDtypeStruct((16, 512), jnp.float32, sharding=sharding)}
    tx = adamx.adam(1e-3, mu_dtype="int8")
    planned = tx.init(params)
    assert planned[0].mu["w"].codes.sharding == sharding
    assert planned[0].mu["w"].scales.sharding.spec == P(None, "model")
    assert planned[0].nu["w"].sharding == sharding
    expected = adamx.state_shardings(tx, params)
    assert jax.tree.map(lambda x: x.sharding, planned) == expected


def test_abstract_init_through_optax_wrappers():
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        adamx.with_stats(adamx.adamw(1e-3, mu_dtype="int8"), every=10),
    )
    planned = tx.init(PARAMS)
    expected = jax.eval_shape(tx.init, _concrete(PARAMS))
    assert _described(planned) == _described(expected)


def test_abstract_and_concrete_leaves_mixed():
    params = {"w": jax.ShapeDtypeStruct((4, 8), jnp.float32), "b": jnp.ones(8)}
    planned = adamx.adam(1e-3).init(params)
    expected = jax.eval_shape(adamx.adam(1e-3).init, _concrete(params))
    assert _described(planned) == _described(expected)


# Complex parameters: mu_dtype names a precision, real or complex alike.


@pytest.mark.parametrize("mu_dtype", [jnp.complex64, jnp.float32])
def test_complex_mu_dtype_names_a_precision(mu_dtype):
    params = {"c": jnp.ones(3, jnp.complex64), "r": jnp.ones(3, jnp.float32)}
    tx = adamx.adam(0.1, mu_dtype=mu_dtype)
    state = tx.init(params)
    assert state[0].mu["c"].dtype == jnp.complex64
    assert state[0].mu["r"].dtype == jnp.float32  # a real moment stays real
    assert state[0].nu["c"].dtype == jnp.float32
    grads = {"c": jnp.array([1 + 1j, -2j, 3], jnp.complex64), "r": jnp.ones(3)}
    updates, _ = tx.update(grads, state)
    # Step 1 of Adam is g/|g| elementwise, times -lr.
    expected = -0.1 * np.asarray(grads["c"]) / np.abs(np.asarray(grads["c"]))
    np.testing.assert_allclose(np.asarray(updates["c"]), expected, rtol=1e-6)


def test_complex_mu_dtype_for_bfloat16_precision_is_refused():
    # complex parameters have no bfloat16 complex counterpart
    tx = adamx.adam(0.1, mu_dtype=jnp.bfloat16)
    with pytest.raises(TypeError, match=r"\['c'\].*bfloat16"):
        tx.init({"c": jnp.ones(3, jnp.complex64)})


def test_complex_nu_dtype_is_refused_naming_the_argument():
    with pytest.raises(ValueError, match=r"adam\(nu_dtype=.*this moment is real"):
        adamx.adam(0.1, nu_dtype=jnp.complex64)


def test_mu_dtype_complex128_under_x64():
    with jax.enable_x64(True):
        params = jnp.ones(2, jnp.complex128)
        state = adamx.scale_by_adam(mu_dtype=jnp.complex128).init(params)
        assert state.mu.dtype == jnp.complex128
        assert state.nu.dtype == jnp.float64
