"""AdaBelief (adamx.transforms.belief) against the paper's Algorithm 2 and optax."""

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

from adamx.transforms.belief import adabelief, scale_by_belief

# ---------------------------------------------------------------------------
# Float64 reference: Zhuang et al. (2020), Algorithm 2 (eps_root added to s_t
# every step), with NAdam's look-ahead for nesterov=True (Dozat 2016).
# ---------------------------------------------------------------------------


def belief_reference(b1: float, b2: float, eps: float, eps_root: float, nesterov: bool):
    def run(grads: np.ndarray):
        m = np.zeros_like(grads[0])
        s = np.zeros(grads.shape[1:])
        directions = []
        for t, g in enumerate(grads, start=1):
            m = b1 * m + (1 - b1) * g
            s = b2 * s + (1 - b2) * np.abs(g - m) ** 2 + eps_root
            if nesterov:
                m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
            else:
                m_hat = m / (1 - b1**t)
            s_hat = s / (1 - b2**t)
            directions.append(m_hat / (np.sqrt(s_hat) + eps))
        return np.stack(directions), (m, s)

    return run


DEFAULTS = {"b1": 0.9, "b2": 0.999, "eps": 1e-16, "eps_root": 1e-16}
CONFIGS = {
    "defaults": {},
    # eps_root / (1 - b2) = 0.1 is comparable to the quiet steps' (g - m)^2,
    # so accumulating it in s (rather than adding it once) shows.
    "large-eps": {"b2": 0.99, "eps": 1e-3, "eps_root": 1e-3},
    "no-momentum": {"b1": 0.0, "b2": 0.9},
}

# float32 against float64: every step rounds a few float32 operations into m_t
# and the second moment (2**-24 = 6e-8 relative each); in an EMA of decay b
# those roundings add up like a random walk over min(t, 1/(1 - b)) steps,
# about 10 ulps = 6e-7 over these 120 steps. Errors are relative to the leaf's
# largest value. Measured worst: 1.5e-6 (s_t with b2=0.99); 5e-6 leaves a
# margin of 3x. The reference gets the decimal hyperparameters in both
# widths: adamx forms 1 - b from the decimal before rounding to float32, so
# its s_t is within rounding of the decimal b2's, while a reference given
# float32(0.999) would weigh each (g - m)^2 by 1 - float32(0.999), 1.3e-5
# away from 0.001 (measured 6.5e-6 off here).
# float64: 1e-10 is far above rounding (1e-15) and passes only exact algebra.
TOLERANCES = {False: 5e-6, True: 1e-10}


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_float64_reference(config: str, nesterov: bool, x64: bool) -> None:
    hp = {**DEFAULTS, **CONFIGS[config]}
    reference_check(
        scale_by_belief(**hp, nesterov=nesterov),
        belief_reference(**hp, nesterov=nesterov),
        x64=x64,
        rtol=TOLERANCES[x64],
    )


# ---------------------------------------------------------------------------
# Parity with optax, parameters fed back through a small MLP.
# ---------------------------------------------------------------------------

# adamx in float32 against optax run in float64 (see assert_same_training),
# parameters and state at every step: measured worst 1.2e-6 (adabelief).
# optax's own float32 run strays 6.5e-6 (adabelief-schedule), from its
# float32 1 - b2**t.
PARITY_RTOL = 5e-6

PARITY = {
    "adabelief": (lambda: adabelief(1e-2), lambda: optax.adabelief(1e-2)),
    "adabelief-nesterov": (
        lambda: adabelief(1e-2, nesterov=True),
        lambda: optax.adabelief(1e-2, nesterov=True),
    ),
    "adabelief-hyperparameters": (
        lambda: adabelief(3e-3, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-6),
        lambda: optax.adabelief(3e-3, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-6),
    ),
    "adabelief-schedule": (
        lambda: adabelief(optax.linear_schedule(1e-2, 1e-3, 100), nesterov=True),
        lambda: optax.adabelief(optax.linear_schedule(1e-2, 1e-3, 100), nesterov=True),
    ),
}


@pytest.mark.parametrize("case", list(PARITY))
def test_matches_optax_every_step(case: str) -> None:
    make_adamx, make_optax = PARITY[case]
    assert_same_training(make_adamx, make_optax, PARITY_RTOL)


# ---------------------------------------------------------------------------
# Hyperparameter forms, storage dtypes, float16, errors.
# ---------------------------------------------------------------------------


def _grads(params, steps: int, seed: int = 5):
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        for _ in range(steps)
    ]


HP = {"b1": 0.8, "b2": 0.99, "eps": 1e-8, "eps_root": 1e-6}


@pytest.mark.parametrize("form", ["array", "injected"])
def test_hyperparameters_as_arrays_and_tracers(form: str) -> None:
    params = real_tree(jnp.float32)
    grads = _grads(params, 6)
    # An array (here float32) or a traced value means its float32 value, and
    # adamx forms 1 - b from that value; for a Python float it forms 1 - b
    # from the decimal. The Python floats meaning the same as the arrays are
    # therefore the float32 values.
    rounded = {k: as_float32(v) for k, v in HP.items()}
    expected, _ = run_steps(scale_by_belief(**rounded), grads, params)
    if form == "array":
        tx = scale_by_belief(**{k: jnp.asarray(v) for k, v in HP.items()})
    else:  # values arrive as tracers inside the jitted update
        tx = optax.inject_hyperparams(scale_by_belief)(**HP)
    actual, _ = run_steps(tx, grads, params)
    for a, e in zip(actual, expected, strict=True):
        for name in e:
            np.testing.assert_allclose(a[name], e[name], rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16])
def test_bfloat16_storage_keeps_dtypes(param_dtype) -> None:
    params = real_tree(param_dtype)
    grads = _grads(params, 8)
    tx = scale_by_belief(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16, nesterov=True)
    history, state = run_steps(tx, grads, params)
    for leaf in jax.tree.leaves((state.mu, state.nu)):
        assert leaf.dtype == jnp.bfloat16
    wide, _ = run_steps(scale_by_belief(nesterov=True), grads, params)
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


@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
def test_float16_zero_gradients_give_zero_updates(nesterov: bool) -> None:
    params = real_tree(jnp.float16)
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx = adabelief(1e-3, nesterov=nesterov)
    history, state = run_steps(tx, [zeros] * 5, params)
    for updates in history:
        for name, leaf in updates.items():
            assert leaf.dtype == jnp.float16, name
            # m stays 0 and s >= eps_root in float32, so 0 / positive = 0.
            np.testing.assert_array_equal(np.asarray(leaf, np.float32), 0.0)
    for leaf in jax.tree.leaves(state):
        assert np.all(np.isfinite(np.asarray(leaf, np.float32)))


def test_complex_parameters_keep_a_real_second_moment() -> None:
    params = {"z": jnp.zeros(2, jnp.complex64)}
    tx = scale_by_belief(eps=0.0, eps_root=0.0)
    g = {"z": jnp.array([3.0 + 4.0j, -1.0j], jnp.complex64)}
    updates, state = jax.jit(tx.update)(g, tx.init(params))
    assert state.nu["z"].dtype == jnp.float32
    # s_1 = (1 - b2) |0.9 g|^2, so the first direction is g / (0.9 |g|).
    # adamx forms 1 - b2 = 0.001 before rounding it to float32, so s_1 is
    # within a few float32 ulps of the decimal value.
    np.testing.assert_allclose(
        state.nu["z"], [0.001 * 0.81 * 25, 0.001 * 0.81], rtol=1e-6
    )
    np.testing.assert_allclose(
        updates["z"], [(0.6 + 0.8j) / 0.9, -1.0j / 0.9], rtol=1e-5
    )


ERRORS = [
    (lambda: scale_by_belief(b1=1.5), "scale_by_belief(b1=1.5): b1 must be in [0, 1)"),
    (lambda: scale_by_belief(b2=1), "scale_by_belief(b2=1): b2 must be in [0, 1)"),
    (lambda: scale_by_belief(eps=-1.0), "scale_by_belief(eps=-1.0): eps must be >= 0"),
    (
        lambda: scale_by_belief(eps_root=-1e-16),
        "scale_by_belief(eps_root=-1e-16): eps_root must be >= 0",
    ),
    (
        lambda: scale_by_belief(mu_dtype="bool"),
        "scale_by_belief(mu_dtype='bool'): state must be stored in a floating dtype",
    ),
    (lambda: adabelief(0.1, b2=2.0), "adabelief(b2=2.0): b2 must be in [0, 1)"),
    (lambda: adabelief(-1e-3), "adabelief(learning_rate=-0.001): learning_rate"),
    (
        lambda: adabelief(0.1, nu_dtype="int32"),
        "adabelief(nu_dtype='int32'): state must be stored in a floating dtype",
    ),
]


@pytest.mark.parametrize(("build", "message"), ERRORS)
def test_construction_errors_quote_the_call(build, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build()
