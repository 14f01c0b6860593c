"""AdaMax and AdaMaxW (adamx.transforms.adamax) against the paper and optax."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from family_harness import (
    as_float32,
    assert_close_scaled,
    assert_same_training,
    real_tree,
    reference_check,
    run_steps,
)

from adamx.transforms.adamax import adamax, adamaxw, scale_by_adamax

# ---------------------------------------------------------------------------
# Float64 reference: Kingma & Ba (2015), Algorithm 2, with optax's eps placed
# inside the maximum.
# ---------------------------------------------------------------------------


def adamax_reference(b1: float, b2: float, eps: float):
    def run(grads: np.ndarray):
        m = np.zeros_like(grads[0])
        u = np.zeros(grads.shape[1:])
        directions = []
        for t, g in enumerate(grads, start=1):
            m = b1 * m + (1 - b1) * g
            u = np.maximum(b2 * u, np.abs(g) + eps)
            directions.append((m / (1 - b1**t)) / u)
        return np.stack(directions), (m, u)

    return run


CONFIGS = {
    "defaults": {},
    # eps comparable to the smallest gradients, so its placement matters.
    "large-eps": {"eps": 0.05},
    # b1 = 0: no momentum, the bias correction is exactly 1.
    "no-momentum": {"b1": 0.0, "b2": 0.5, "eps": 1e-6},
    # The paper's rule, without eps.
    "paper": {"b1": 0.8, "b2": 0.99, "eps": 0.0},
}
DEFAULTS = {"b1": 0.9, "b2": 0.999, "eps": 1e-8}

# float32 against float64: every step rounds a few float32 operations into m_t
# and the second moment (2**-24 = 6e-8 relative each); in an EMA of decay b
# those roundings add up like a random walk over min(t, 1/(1 - b)) steps,
# about 10 ulps = 6e-7 over these 120 steps. Errors are relative to the leaf's
# largest value. Measured worst: 2.2e-7; 5e-6 leaves a margin of 20x.
# float64: 1e-10 is far above rounding (1e-15) and passes only exact algebra.
TOLERANCES = {False: 5e-6, True: 1e-10}


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_float64_reference(config: str, x64: bool) -> None:
    hp = {**DEFAULTS, **CONFIGS[config]}
    # In float32 adamx forms 1 - b1 from the decimal b1, so the reference gets
    # the decimal. b2 enters only as the rate of u_t = max(b2 u_{t-1}, ...),
    # which adamx holds as float32(b2): at b2 = 0.999 that rate is 1.3e-8
    # larger, which compounds over the run (6.8e-7 with the decimal rate
    # against 2.1e-7 with the float32 one), so the reference gets the latter.
    ref_hp = hp if x64 else {**hp, "b2": as_float32(hp["b2"])}
    reference_check(
        scale_by_adamax(**hp),
        adamax_reference(**ref_hp),
        x64=x64,
        rtol=TOLERANCES[x64],
    )


# ---------------------------------------------------------------------------
# Parity with optax, parameters fed back through a small MLP.
# ---------------------------------------------------------------------------

# adamx in float32 against optax run in float64 (see assert_same_training),
# parameters and state at every step: measured worst 1.5e-6 (adamax). optax's
# own float32 run is as close here (9e-7): Adamax corrects only the first
# moment, at b1 = 0.9, where 1 - b1**t does not cancel.
PARITY_RTOL = 5e-6


def _decay_matrices(params):
    return {name: leaf.ndim == 2 for name, leaf in params.items()}


PARITY = {
    "adamax": (lambda: adamax(1e-2), lambda: optax.adamax(1e-2)),
    "adamax-hyperparameters": (
        lambda: adamax(3e-3, b1=0.8, b2=0.95, eps=1e-3),
        lambda: optax.adamax(3e-3, b1=0.8, b2=0.95, eps=1e-3),
    ),
    "adamaxw": (
        lambda: adamaxw(1e-2, weight_decay=0.1),
        lambda: optax.adamaxw(1e-2, weight_decay=0.1),
    ),
    "adamaxw-mask-schedules": (
        lambda: adamaxw(
            optax.cosine_decay_schedule(1e-2, 100),
            weight_decay=optax.linear_schedule(0.2, 0.0, 100),
            mask=_decay_matrices,
        ),
        lambda: optax.adamaxw(
            optax.cosine_decay_schedule(1e-2, 100),
            weight_decay=optax.linear_schedule(0.2, 0.0, 100),
            mask=_decay_matrices,
        ),
    ),
    "scale_by_adamax": (
        lambda: optax.chain(scale_by_adamax(eps=1e-4), optax.scale(-1e-2)),
        lambda: optax.chain(optax.scale_by_adamax(eps=1e-4), optax.scale(-1e-2)),
    ),
}


@pytest.mark.parametrize("case", list(PARITY))
def test_matches_optax_every_step(case: str) -> None:
    make_adamx, make_optax = PARITY[case]
    assert_same_training(make_adamx, make_optax, PARITY_RTOL)


# ---------------------------------------------------------------------------
# Hyperparameter forms, storage dtypes, float16, complex, errors.
# ---------------------------------------------------------------------------


def _grads(params, steps: int, seed: int = 5):
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        for _ in range(steps)
    ]


@pytest.mark.parametrize("form", ["array", "injected"])
def test_hyperparameters_as_arrays_and_tracers(form: str) -> None:
    params = real_tree(jnp.float32)
    grads = _grads(params, 6)
    hp = {"b1": 0.8, "b2": 0.99, "eps": 1e-3}
    # An array (here float32) or a traced value means its float32 value, and
    # adamx forms 1 - b1 from that value; for a Python float it forms 1 - b1
    # from the decimal. The Python floats meaning the same as the arrays are
    # therefore the float32 values.
    rounded = {k: as_float32(v) for k, v in hp.items()}
    expected, _ = run_steps(scale_by_adamax(**rounded), grads, params)
    if form == "array":
        tx = scale_by_adamax(**{k: jnp.asarray(v) for k, v in hp.items()})
    else:  # values arrive as tracers inside the jitted update
        tx = optax.inject_hyperparams(scale_by_adamax)(**hp)
    actual, _ = run_steps(tx, grads, params)
    for a, e in zip(actual, expected, strict=True):
        for name in e:
            np.testing.assert_allclose(a[name], e[name], rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16])
def test_bfloat16_storage_keeps_dtypes(param_dtype) -> None:
    params = real_tree(param_dtype)
    grads = _grads(params, 8)
    tx = scale_by_adamax(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    history, state = run_steps(tx, grads, params)
    for leaf in jax.tree.leaves((state.mu, state.nu)):
        assert leaf.dtype == jnp.bfloat16
    wide, _ = run_steps(scale_by_adamax(), grads, params)
    for updates, expected in zip(history, wide, strict=True):
        for name, leaf in updates.items():
            assert leaf.dtype == param_dtype, name
            # bfloat16 keeps 8 significant bits: 2**-8 = 4e-3 per stored value,
            # a few of which enter each update.
            assert_close_scaled(
                np.asarray(leaf, np.float32),
                np.asarray(expected[name], np.float32),
                3e-2,
                name,
            )


# name: (optimizer, lr * weight_decay). With zero gradients m stays 0, so the
# direction is 0 and the step is the weight decay alone, -lr * wd * theta.
FLOAT16 = {
    "scale_by_adamax": (scale_by_adamax, 0.0),
    "adamaxw": (lambda: adamaxw(1e-3, weight_decay=0.1), 1e-4),
}


@pytest.mark.parametrize("case", list(FLOAT16))
def test_float16_zero_gradients_give_finite_updates(case: str) -> None:
    make, decay_step = FLOAT16[case]
    params = real_tree(jnp.float16)
    zeros = jax.tree.map(jnp.zeros_like, params)
    history, _ = run_steps(make(), [zeros] * 5, params)
    for updates in history:
        for name, leaf in updates.items():
            assert leaf.dtype == jnp.float16, name
            # eps keeps u >= 1e-8 in float32 although float16 stores u as 0,
            # so 0 / u = 0, never 0 / 0. atol: float16's subnormal spacing.
            expected = -decay_step * np.asarray(params[name], np.float64)
            np.testing.assert_allclose(
                np.asarray(leaf, np.float64), expected, rtol=1e-3, atol=6e-8
            )


def test_complex_parameters_keep_a_real_infinity_norm() -> None:
    params = {"z": jnp.array([3.0 + 4.0j, 0.0 - 1.0j], jnp.complex64)}
    tx = scale_by_adamax(eps=0.0)
    updates, state = jax.jit(tx.update)(params, tx.init(params))
    assert state.nu["z"].dtype == jnp.float32
    np.testing.assert_allclose(state.nu["z"], [5.0, 1.0])
    # The first direction is g / |g|, a unit phase.
    np.testing.assert_allclose(updates["z"], [0.6 + 0.8j, -1.0j], rtol=1e-6)


ERRORS = [
    (lambda: scale_by_adamax(b1=1.5), "scale_by_adamax(b1=1.5): b1 must be in [0, 1)"),
    (lambda: scale_by_adamax(b2=1.0), "scale_by_adamax(b2=1.0): b2 must be in [0, 1)"),
    (
        lambda: scale_by_adamax(eps=-1e-8),
        "scale_by_adamax(eps=-1e-08): eps must be >= 0",
    ),
    (
        lambda: scale_by_adamax(mu_dtype="int32"),
        "scale_by_adamax(mu_dtype='int32'): state must be stored in a floating dtype",
    ),
    (lambda: adamax(0.1, b2=-0.1), "adamax(b2=-0.1): b2 must be in [0, 1)"),
    (lambda: adamax(-1.0), "adamax(learning_rate=-1.0): learning_rate must be >= 0"),
    (
        lambda: adamaxw(0.1, weight_decay=-0.5),
        "adamaxw(weight_decay=-0.5): weight_decay must be >= 0",
    ),
    (
        lambda: adamaxw(0.1, nu_dtype="int32"),
        "adamaxw(nu_dtype='int32'): state must be stored in a floating dtype",
    ),
]


@pytest.mark.parametrize(("build", "message"), ERRORS)
def test_construction_errors_quote_the_call(build, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build()
