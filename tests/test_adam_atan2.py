"""Adam-atan2 (adamx.transforms.adam_atan2) against its defining update rule.

optax has no Adam-atan2, so the float64 NumPy reference below is the only
comparison of values; the properties that motivate the method (no epsilon,
exact zeros, scale invariance, boundedness) are tested directly. What every
catalogued transform shares (traced hyperparameters, storage dtypes, the
refusal of complex leaves, construction errors) is tested table-driven in
test_matrix, test_uniform_options and test_errors.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from harness import (
    STEPS,
    as_float32,
    assert_close_scaled,
    random_inputs,
    real_tree,
    reference_hyperparameters,
    run_scan,
    scanner,
)

from adamx.transforms.adam_atan2 import adam_atan2, scale_by_adam_atan2

# ---------------------------------------------------------------------------
# Float64 reference: Everett et al. (2024), Adam with m_hat / (sqrt(v_hat) + eps)
# replaced by a * atan2(m_hat, b * sqrt(v_hat)).
# ---------------------------------------------------------------------------


def atan2_reference(
    p0, grads, *, b1, b2, a, b, eps_root, weight_decay=0.0, learning_rate=None
):
    """One leaf's directions (or, with ``learning_rate``, its fed-back steps)."""
    p = p0.copy()
    m = np.zeros_like(grads[0])
    v = np.zeros_like(grads[0])
    updates = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        u = a * np.arctan2(m_hat, b * np.sqrt(v_hat + eps_root))
        if learning_rate is None:
            updates.append(u)
        else:
            step = -learning_rate * (u + weight_decay * p)
            updates.append(step)
            p = p + step
    return np.stack(updates), (m, v), p


CONFIGS = {
    "defaults": dict(b1=0.9, b2=0.999, a=1.27, b=1.0, eps_root=0.0),
    # b > 1 puts most updates on the linear part of atan, b < 1 near the
    # saturation a*pi/2; no momentum; eps_root on the hot path.
    "b=3-eps_root": dict(b1=0.0, b2=0.95, a=1.0, b=3.0, eps_root=1e-6),
    "b=0.2": dict(b1=0.5, b2=0.99, a=2.0, b=0.2, eps_root=0.0),
}
# float32: the moments carry a few ulps (see test_adam) and atan2 is well
# conditioned (|d atan2| <= |dy/y| + |dx/x| in relative terms), so the update
# is within a few ulps of a*pi/2 (measured worst: 6.1e-7). 5e-6 leaves a
# margin of 8x, and excludes a reference given 1 - float32(b2) instead of the
# decimal 1 - b2 adamx forms (6.6e-6; see reference_hyperparameters).
RTOL = {False: 5e-6, True: 1e-10}


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_float64_reference(config: str, x64: bool) -> None:
    hp = CONFIGS[config]
    params, grads = random_inputs(len(config), np.float64 if x64 else np.float32)
    with jax.enable_x64(x64):
        updates, state, _ = run_scan(scale_by_adam_atan2(**hp), params, grads)
    assert np.asarray(state.count).dtype == np.int32 and int(state.count) == STEPS
    ref_hp = reference_hyperparameters(hp, x64)
    bound = hp["a"] * math.pi / 2
    for name, g in grads.items():
        expected, (m, v), _ = atan2_reference(
            params[name].astype(np.float64), g.astype(np.float64), **ref_hp
        )
        assert updates[name].dtype == g.dtype, name
        assert_close_scaled(updates[name], expected, RTOL[x64], f"updates[{name}]")
        assert_close_scaled(state.mu[name], m, RTOL[x64], f"mu[{name}]")
        assert_close_scaled(state.nu[name], v, RTOL[x64], f"nu[{name}]")
        assert np.all(np.abs(updates[name]) <= bound * (1 + 1e-6)), name


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
@pytest.mark.parametrize("mask", [None, "matrices"])
def test_optimizer_matches_float64_reference(mask, x64: bool) -> None:
    params, grads = random_inputs(7, np.float64 if x64 else np.float32)
    hp = CONFIGS["defaults"]
    learning_rate, weight_decay = 0.05, 0.1

    def decayed(x):
        return mask is None or np.ndim(x) >= 2

    tx = adam_atan2(
        learning_rate,
        **hp,
        weight_decay=weight_decay,
        mask=None if mask is None else (lambda p: jax.tree.map(decayed, p)),
    )
    with jax.enable_x64(x64):
        updates, _, final = run_scan(tx, params, grads, feed_back=True)
    wide = (lambda x: x) if x64 else as_float32
    ref_hp = reference_hyperparameters(hp, x64)
    for name, g in grads.items():
        expected, _, p = atan2_reference(
            params[name].astype(np.float64),
            g.astype(np.float64),
            **ref_hp,
            weight_decay=wide(weight_decay) if decayed(params[name]) else 0.0,
            learning_rate=wide(learning_rate),
        )
        assert updates[name].dtype == g.dtype, name
        # Fed back, a float32 parameter also picks up one rounding per step.
        rtol = 1e-10 if x64 else 5e-5
        assert_close_scaled(updates[name], expected, rtol, f"updates[{name}]")
        assert_close_scaled(final[name], p, rtol, f"params[{name}]")


# ---------------------------------------------------------------------------
# What removing epsilon buys: exact zeros and scale invariance
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_zero_gradients_give_exactly_zero_updates(dtype) -> None:
    params = real_tree(dtype)
    tx = scale_by_adam_atan2()
    state = tx.init(params)
    update = jax.jit(tx.update)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for _ in range(3):
        updates, state = update(zeros, state)
        for name, u in updates.items():
            assert u.dtype == dtype, name
            np.testing.assert_array_equal(np.asarray(u, np.float32), 0.0, err_msg=name)


# One compiled scan and one unscaled run serve every scaling test.
_SCAN = scanner(scale_by_adam_atan2())
_PARAMS, _GRADS = random_inputs(5, np.float32)


@functools.cache
def _unscaled():
    return _SCAN(_PARAMS, _GRADS)[0]


@pytest.mark.parametrize("power", [-20, -13, 7, 30])
def test_scaling_gradients_by_a_power_of_two_changes_nothing(power: int) -> None:
    # A power of two scales m, v and sqrt(v) exactly (g**2 stays a normal
    # float32 for these powers), so the ratio atan2 sees is bit-identical.
    scaled = {k: g * np.float32(2.0**power) for k, g in _GRADS.items()}
    updates, _, _ = _SCAN(_PARAMS, scaled)
    for name, expected in _unscaled().items():
        np.testing.assert_array_equal(updates[name], expected, err_msg=name)


@pytest.mark.parametrize("factor", [1e-12, 3.7e-3, 5e4, 1e15])
def test_scaling_gradients_by_any_factor_changes_only_rounding(factor: float) -> None:
    scaled = {k: (g * factor).astype(np.float32) for k, g in _GRADS.items()}
    updates, _, _ = _SCAN(_PARAMS, scaled)
    for name, expected in _unscaled().items():
        # Only the rounding of g * factor differs: a few float32 ulps of the
        # update's scale (|u| <= 1.27 * pi / 2).
        np.testing.assert_allclose(
            updates[name], expected, rtol=1e-5, atol=1e-5, err_msg=name
        )


# ---------------------------------------------------------------------------
# The alias without decay
# ---------------------------------------------------------------------------


def test_alias_without_decay_needs_no_params() -> None:
    # weight_decay=0.0 chains no decay step, so update works without params
    # and is exactly -learning_rate * the direction.
    params = real_tree(jnp.float32)
    grads = jax.tree.map(lambda p: 0.3 * p + 0.1, params)

    @jax.jit
    def both():
        tx, opt = scale_by_adam_atan2(), adam_atan2(0.25)
        return tx.update(grads, tx.init(params))[0], opt.update(
            grads, opt.init(params)
        )[0]

    direction, updates = both()
    for name in params:
        np.testing.assert_array_equal(updates[name], -0.25 * direction[name])
