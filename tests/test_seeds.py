"""adamx on the worked examples of its maths seeds, against hand arithmetic.

Every expected value below is worked out by hand (written as the arithmetic
that produces it) from Adam's equations with t = 1 on the first step:

    m_t = b1 m_{t-1} + (1 - b1) g_t        m_hat = m_t / (1 - b1^t)
    v_t = b2 v_{t-1} + (1 - b2) g_t^2      v_hat = v_t / (1 - b2^t)
    theta_t = theta_{t-1} - alpha m_hat / (sqrt(v_hat) + eps)

Each example runs in float32 and, under ``jax.enable_x64``, in float64.

Float32 tolerances: the seeds' numbers are exact decimals, while adamx
computes with the float32 values of its hyperparameters. float32(0.9) is
0.89999998, so 1 - b1 is 0.10000002 (2.4e-7 relatively from 0.1), and
float32(0.999) is 0.99900001, so 1 - b2 is 9.99987e-4 (1.3e-5 from 1e-3).
Quantities proportional to 1 - b1 (m_1) are therefore checked to rtol 1e-6
and those proportional to 1 - b2 (v_1) to rtol 2e-5; the bias-corrected
ratios, where 1 - b cancels exactly, and the parameters are checked to
rtol 1e-6 (a few float32 ulps).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from catalogue import count_state

import adamx
from adamx import numerics

B1, B2, EPS = 0.9, 0.999, 1e-8


@dataclasses.dataclass(frozen=True)
class Tol:
    x64: bool
    dtype: type
    exact: float  # ratios and parameters
    m: float  # proportional to 1 - b1
    v: float  # proportional to 1 - b2


FLOAT32 = Tol(False, np.float32, exact=1e-6, m=1e-6, v=2e-5)
FLOAT64 = Tol(True, np.float64, exact=1e-14, m=1e-14, v=1e-12)
PRECISIONS = [pytest.param(FLOAT32, id="float32"), pytest.param(FLOAT64, id="float64")]

# Optimizers whose first step is Adam's alpha * m_hat / (sqrt(v_hat) + eps).
# AMSGrad (optax's bias-corrected form) takes the same first step, since the
# running maximum starts at 0 and so equals v_hat after one update.
OPTIMIZERS = [
    pytest.param(lambda lr: adamx.adam(lr), id="adam"),
    pytest.param(
        lambda lr: optax.chain(adamx.scale_by_adam(), optax.scale(-lr)),
        id="chain(scale_by_adam,scale)",
    ),
    pytest.param(lambda lr: adamx.amsgrad(lr), id="amsgrad"),
]


def _step(make, lr, theta, grad_fn):
    """One optimizer step from ``theta``: (g, new theta, moments)."""
    g = jax.grad(grad_fn)(theta)
    tx = make(lr)
    updates, state = tx.update(g, tx.init(theta), theta)
    return g, optax.apply_updates(theta, updates), count_state(state)


# ---------------------------------------------------------------------------
# Seed 000: f(theta) = theta^2 from theta_0 = 2, alpha = 0.1
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("tol", PRECISIONS)
@pytest.mark.parametrize("make", OPTIMIZERS)
def test_seed000_theta_squared(make, tol):
    with jax.enable_x64(tol.x64):
        theta0 = jnp.asarray(2.0, tol.dtype)
        g, theta1, moments = _step(make, 0.1, theta0, lambda th: th**2)

        assert g.dtype == tol.dtype and theta1.dtype == tol.dtype
        assert float(g) == 4.0  # g_1 = 2 * theta_0
        assert int(moments.count) == 1  # the first update is t = 1
        np.testing.assert_allclose(moments.mu, 0.1 * 4.0, rtol=tol.m)  # m_1 = 0.4
        np.testing.assert_allclose(moments.nu, 0.001 * 16.0, rtol=tol.v)  # v_1 = 0.016
        # m_hat = 0.4 / (1 - 0.9) = 4, v_hat = 0.016 / (1 - 0.999) = 16.
        m_hat = numerics.bias_correction(moments.mu, B1, moments.count)
        v_hat = numerics.bias_correction(moments.nu, B2, moments.count)
        np.testing.assert_allclose(m_hat, 4.0, rtol=tol.exact)
        np.testing.assert_allclose(v_hat, 16.0, rtol=tol.exact)
        if hasattr(moments, "nu_max"):
            np.testing.assert_allclose(moments.nu_max, 16.0, rtol=tol.exact)
        # theta_1 = 2 - 0.1 * 4 / (sqrt(16) + 1e-8) = 1.9 - 2.5e-10.
        np.testing.assert_allclose(
            theta1, 2.0 - 0.1 * 4.0 / (4.0 + EPS), rtol=tol.exact
        )
        np.testing.assert_allclose(theta1, 1.9, rtol=tol.exact, atol=1e-9)


def test_seed000_direction_is_sign_of_gradient():
    # The direction alone (before the learning rate) is 4 / (4 + 1e-8) =
    # 1 - 2.5e-9: float32 can only tell it from 1 by a few ulps of rounding.
    tx = adamx.scale_by_adam()
    theta = jnp.asarray(2.0)
    u, _ = tx.update(jax.grad(lambda th: th**2)(theta), tx.init(theta))
    assert u.dtype == jnp.float32
    np.testing.assert_allclose(u, 1.0, rtol=1e-6)


# ---------------------------------------------------------------------------
# Seed 002: MSE (w x - y)^2 with w = 0.5, x = 3, y = 4, alpha = 0.1
# ---------------------------------------------------------------------------

W0, X, Y, ALPHA = 0.5, 3.0, 4.0, 0.1


def _mse(w):
    return (w * X - Y) ** 2


@pytest.mark.parametrize("tol", PRECISIONS)
@pytest.mark.parametrize("make", OPTIMIZERS)
def test_seed002_mse_first_step(make, tol):
    with jax.enable_x64(tol.x64):
        g, w1, moments = _step(make, ALPHA, jnp.asarray(W0, tol.dtype), _mse)

        assert float(g) == -15.0  # 2 * (0.5 * 3 - 4) * 3
        assert int(moments.count) == 1
        np.testing.assert_allclose(moments.mu, 0.1 * -15.0, rtol=tol.m)  # -1.5
        np.testing.assert_allclose(moments.nu, 0.001 * 225.0, rtol=tol.v)  # 0.225
        # w_1 = 0.5 - 0.1 * (-15) / (15 + 1e-8) = 0.6 - 6.7e-11.
        np.testing.assert_allclose(w1, 0.5 + 0.1 * 15.0 / (15.0 + EPS), rtol=tol.exact)
        np.testing.assert_allclose(w1, 0.6, rtol=tol.exact, atol=1e-10)


# The seed's own text bias-corrects this first step with t = 2:
#   m_hat = -1.5 / (1 - 0.9^2) = -7.8947, v_hat = 0.225 / (1 - 0.999^2),
# which it quotes as 112.811 and w_1 ~= 0.57433. (0.225 / 0.001999 is in fact
# 112.556, giving w_1 = 0.57441.) adamx follows Kingma & Ba: the first update
# has t = 1, so m_hat_1 = g_1 exactly and the step is alpha * sign(g_1).
SEED002_T2_M_HAT = -1.5 / (1 - 0.9**2)
SEED002_T2_V_HAT = 0.225 / (1 - 0.999**2)
SEED002_T2_W1 = 0.5 - 0.1 * SEED002_T2_M_HAT / math.sqrt(SEED002_T2_V_HAT)
SEED002_T2_W1_QUOTED = 0.57433


def test_seed002_t2_arithmetic_is_what_the_text_says():
    # Guards the numbers the next test rejects: they are the t = 2 values.
    assert pytest.approx(-7.8947, abs=1e-4) == SEED002_T2_M_HAT
    assert pytest.approx(112.556, abs=1e-3) == SEED002_T2_V_HAT
    assert pytest.approx(0.57441, abs=1e-5) == SEED002_T2_W1
    assert pytest.approx(SEED002_T2_W1, abs=1e-3) == SEED002_T2_W1_QUOTED


@pytest.mark.parametrize("tol", PRECISIONS)
@pytest.mark.parametrize("make", OPTIMIZERS)
def test_seed002_first_step_is_not_corrected_with_t2(make, tol):
    with jax.enable_x64(tol.x64):
        g, w1, moments = _step(make, ALPHA, jnp.asarray(W0, tol.dtype), _mse)

        # adamx's t = 1 correction: m_hat_1 = -1.5 / 0.1 = g exactly,
        # v_hat_1 = 0.225 / 0.001 = g^2 exactly.
        m_hat = numerics.bias_correction(moments.mu, B1, moments.count)
        v_hat = numerics.bias_correction(moments.nu, B2, moments.count)
        np.testing.assert_allclose(m_hat, float(g), rtol=tol.exact)
        np.testing.assert_allclose(v_hat, float(g) ** 2, rtol=tol.exact)
        assert abs(float(m_hat) - SEED002_T2_M_HAT) > 7.0
        assert abs(float(v_hat) - SEED002_T2_V_HAT) > 100.0
        # The step is the full alpha * 15 / (15 + eps) = 0.1, not the t = 2
        # step 0.1 * 7.8947 / 10.609 = 0.0744 (0.74 alpha).
        step = float(w1) - W0
        np.testing.assert_allclose(
            step, ALPHA * 15.0 / (15.0 + EPS), rtol=tol.exact * 10
        )
        assert step / ALPHA > 0.99 and abs(SEED002_T2_W1 - W0) / ALPHA < 0.75
        for t2_value in (SEED002_T2_W1, SEED002_T2_W1_QUOTED):
            assert abs(float(w1) - t2_value) > 0.02, (float(w1), t2_value)


@pytest.mark.parametrize("tol", PRECISIONS)
def test_seed002_second_step_uses_t2(tol):
    # A second step with the same gradient -15 (the gradient is held fixed):
    #   m_2 = 0.9 * -1.5 + 0.1 * -15 = -2.85
    #   m_hat_2 = -2.85 / (1 - 0.9^2) = -2.85 / 0.19 = -15
    #   v_2 = 0.999 * 0.225 + 0.001 * 225 = 0.449775
    #   v_hat_2 = 0.449775 / (1 - 0.999^2) = 0.449775 / 0.001999 = 225
    # so a constant gradient gives two unit steps: w_2 = 0.5 + 2 * 0.1 = 0.7.
    with jax.enable_x64(tol.x64):
        tx = adamx.adam(ALPHA)
        w = jnp.asarray(W0, tol.dtype)
        g = jnp.asarray(-15.0, tol.dtype)
        state = tx.init(w)
        for _ in range(2):
            updates, state = tx.update(g, state, w)
            w = optax.apply_updates(w, updates)
        moments = count_state(state)
        assert int(moments.count) == 2
        np.testing.assert_allclose(moments.mu, -2.85, rtol=tol.m)
        np.testing.assert_allclose(moments.nu, 0.449775, rtol=tol.v)
        m_hat = numerics.bias_correction(moments.mu, B1, moments.count)
        v_hat = numerics.bias_correction(moments.nu, B2, moments.count)
        np.testing.assert_allclose(m_hat, -15.0, rtol=tol.exact * 10)
        np.testing.assert_allclose(v_hat, 225.0, rtol=tol.exact * 10)
        np.testing.assert_allclose(w, 0.7, rtol=tol.exact * 10, atol=1e-9)


# ---------------------------------------------------------------------------
# numerics.bias_correction_factor: 1 - b^t
# ---------------------------------------------------------------------------

# Exactly representable decays, so 1 - b^t is an exact binary fraction.
HAND_FACTORS = [
    (0.5, 1, 0.5),
    (0.5, 2, 0.75),
    (0.5, 10, 1023 / 1024),
    (0.75, 2, 1 - 9 / 16),
    (0.875, 3, 1 - 343 / 512),
    (1 - 2**-9, 1, 2**-9),
    (1 - 2**-9, 2, 2**-8 - 2**-18),
    (0.0, 1, 1.0),
    (0.0, 7, 1.0),
    (0.0, 0, 0.0),
    (0.5, 0, 0.0),
    (0.875, 0, 0.0),
]


@pytest.mark.parametrize("tol", PRECISIONS)
@pytest.mark.parametrize(("decay", "count", "expected"), HAND_FACTORS)
def test_bias_correction_factor_hand_values(decay, count, expected, tol):
    with jax.enable_x64(tol.x64):
        factor = numerics.bias_correction_factor(tol.dtype(decay), np.int32(count))
        assert factor.dtype == tol.dtype
        np.testing.assert_allclose(factor, expected, rtol=tol.exact, atol=0.0)


GRID_DECAYS = [0.0, 0.5, 0.9, 0.999, 0.9999]
GRID_COUNTS = [0, 1, 2, 10, 1000, 2**31 - 1]

# Why -expm1(t log b) is accurate: for b near 1, b^t is near 1 and a float32
# b^t carries an absolute error of up to half an ulp of 1 (6e-8), so the naive
# 1 - b^t has a relative error of 6e-8 / (1 - b^t): 3e-5 at b = 0.999, t = 2.
# expm1 never forms b^t. log(b) is computed to a few ulps relative even for b
# near 1 (log(1 - d) ~ -d has no cancellation), t * log(b) adds one rounding,
# and expm1(x) for x < 0 has condition number x e^x / (e^x - 1) <= 1, so the
# result stays within a few float32 ulps (< 1e-6) relatively for every b, t.
FLOAT32_FACTOR_RTOL = 1e-6


@pytest.mark.parametrize("count", GRID_COUNTS)
@pytest.mark.parametrize("decay", GRID_DECAYS)
def test_bias_correction_factor_float32_grid(decay, count):
    # The reference uses the float32 value of b, which is exactly what adamx
    # receives, so only the evaluation of 1 - b^t is compared.
    b = np.float32(decay)
    factor = numerics.bias_correction_factor(b, np.int32(count))
    assert factor.dtype == jnp.float32
    got = float(factor)
    assert math.isfinite(got)
    expected = 1.0 - float(b) ** count  # float64
    if count == 0:
        assert got == 0.0
    elif decay == 0.0:
        assert got == 1.0
    else:
        assert abs(got - expected) <= FLOAT32_FACTOR_RTOL * expected, (got, expected)


@pytest.mark.parametrize(("decay", "count"), [(0.999, 2), (0.9999, 2), (0.9999, 10)])
def test_naive_float32_factor_would_fail_the_grid_tolerance(decay, count):
    # The grid's 1e-6 bound discriminates: the cancelling float32 1 - b^t
    # misses it at these points, where adamx's factor meets it (above).
    b = np.float32(decay)
    naive = float(np.float32(1.0) - b ** np.float32(count))
    expected = 1.0 - float(b) ** count
    assert abs(naive - expected) > FLOAT32_FACTOR_RTOL * expected


@pytest.mark.parametrize("count", GRID_COUNTS)
@pytest.mark.parametrize("decay", GRID_DECAYS)
def test_bias_correction_factor_float64_grid(decay, count):
    # In float64 the float64 reference 1 - b**t itself cancels (to ~1e-16 /
    # (1 - b^t)), so the comparison allows that on top of a few ulps.
    with jax.enable_x64(True):
        factor = numerics.bias_correction_factor(np.float64(decay), np.int64(count))
        assert factor.dtype == jnp.float64
        got = float(factor)
    assert math.isfinite(got)
    expected = 1.0 - decay**count
    if count == 0:
        assert got == 0.0
    elif decay == 0.0:
        assert got == 1.0
    else:
        assert abs(got - expected) <= 1e-14 * expected + 4e-16, (got, expected)
