"""Properties of Adam's update from Kingma & Ba (2015), Section 2.1, by hypothesis.

Two claims of Section 2.1 are checked over random gradient sequences and betas:

* Scale invariance. With eps = eps_root = 0, the update
  m̂/sqrt(v̂) does not change when every gradient is multiplied by c > 0:
  m scales by c, v by c², so sqrt(v) by c. For c a power of two every float32
  operation scales exactly, so the updates must be bit-identical.
* The step bound. Kingma & Ba state |u_t| <= max(1, (1-b1)/sqrt(1-b2)) and
  call the second value the case of "most severe sparsity". That case (zeros,
  then one nonzero gradient) is checked exactly below. For general sequences
  the claim is *not* a theorem: Cauchy–Schwarz gives the sharp bound

      |u_t| <= S_t = (1-b1)/(1-b1^t) * sqrt((1-b2^t)/(1-b2)) * sqrt(sum_{k<t} r^k),
      r = b1²/b2,

  attained by g_i proportional to (b1/b2)^(t-i), and S_t exceeds the
  Kingma–Ba value for most (b1, b2) in [0, 0.99] x [0.5, 0.9999] within 30
  steps (for example b1=0.9, b2=0.99, t=30 gives S_t = 1.25 > 1). So the
  general test asserts the sharp bound, and a table pins sequences on which
  adamx's step really exceeds the Kingma–Ba value, as the maths says it must.

AMSGrad. With bias correction (optax's convention) the denominator is
max(v̂_1..v̂_t) >= v̂_t, so |u_t| is at most Adam's |m̂_t/sqrt(v̂_t)| and every
bound on Adam's step holds for it. Without bias correction (Reddi et al.)
|u_t| <= |m_t|/sqrt(v_t), whose sharp bound is S_t without the debiasing
factors: (1-b1)/sqrt(1-b2) * sqrt(sum_{k<t} r^k). Nesterov momentum changes the
numerator's weights, so only scale invariance is checked for it.
"""

from __future__ import annotations

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import adamx

T_MAX = 30
SHAPES = [(), (3,), (2, 3)]
BOUND_VARIANTS = ["adam", "amsgrad", "amsgrad_raw"]
INVARIANT_VARIANTS = ["adam", "nadam_direction", "amsgrad", "amsgrad_raw"]


def _make(variant: str, b1, b2, eps):
    if variant == "adam":
        return adamx.scale_by_adam(b1, b2, eps, 0.0)
    if variant == "nadam_direction":
        return adamx.scale_by_adam(b1, b2, eps, 0.0, nesterov=True)
    if variant == "amsgrad":
        return adamx.scale_by_amsgrad(b1, b2, eps, 0.0)
    if variant == "amsgrad_raw":
        return adamx.scale_by_amsgrad(b1, b2, eps, 0.0, None, False, False)
    raise AssertionError(variant)


@functools.partial(jax.jit, static_argnames="variant")
def _scan_updates(grads, b1, b2, eps, *, variant):
    """Every update of the transform over ``grads`` (steps on axis 0)."""
    tx = _make(variant, b1, b2, eps)

    def step(state, g):
        u, state = tx.update(g, state)
        return state, u

    return jax.lax.scan(step, tx.init(grads[0]), grads)[1]


def _updates(variant: str, grads: np.ndarray, b1: float, b2: float, eps: float):
    """float32 updates of ``variant``, run padded to T_MAX steps (one compile)."""
    length = grads.shape[0]
    padded = np.zeros((T_MAX, *grads.shape[1:]), np.float32)
    padded[:length] = grads
    out = _scan_updates(
        jnp.asarray(padded),
        np.float32(b1),
        np.float32(b2),
        np.float32(eps),
        variant=variant,
    )
    out = np.asarray(out)
    assert out.dtype == np.float32
    return out[:length]


def _sharp_bound(variant: str, b1: float, b2: float, steps: int) -> np.ndarray:
    """S_t for t = 1..steps in float64 (see the module docstring)."""
    t = np.arange(1, steps + 1, dtype=np.float64)
    r = b1 * b1 / b2
    geometric = np.cumsum(r ** np.arange(steps, dtype=np.float64))
    rho = (1 - b1) / np.sqrt(1 - b2)
    if variant == "amsgrad_raw":
        return rho * np.sqrt(geometric)
    return (1 - b1) / (1 - b1**t) * np.sqrt((1 - b2**t) / (1 - b2)) * np.sqrt(geometric)


def _abs_ratio(variant: str, grads: np.ndarray, b1: float, b2: float) -> np.ndarray:
    """The update with |g| in the first moment, float64: how large rounding can be.

    Rounding errors of the first moment are relative to the sum of the
    absolute terms, not to m (which may cancel), so this is the natural
    absolute scale for comparing two float32 updates.
    """
    g = grads.astype(np.float64)
    m = np.zeros(g.shape[1:])
    v = np.zeros(g.shape[1:])
    v_max = np.zeros(g.shape[1:])
    out = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(g.shape[0]):
            t = i + 1
            a = np.abs(g[i])
            m = b1 * m + (1 - b1) * a
            v = b2 * v + (1 - b2) * g[i] ** 2
            if variant == "adam":
                num, den = m / (1 - b1**t), v / (1 - b2**t)
            elif variant == "nadam_direction":
                num = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * a / (1 - b1**t)
                den = v / (1 - b2**t)
            elif variant == "amsgrad":
                v_max = np.maximum(v_max, v / (1 - b2**t))
                num, den = m / (1 - b1**t), v_max
            else:
                v_max = np.maximum(v_max, v)
                num, den = m, v_max
            out.append(num / np.sqrt(den))
    return np.stack(out)


def _seen_nonzero(grads: np.ndarray) -> np.ndarray:
    """True where some gradient up to and including step t was nonzero (so v_t > 0)."""
    return np.logical_or.accumulate(grads != 0, axis=0)


def _f32(x: float) -> float:
    """The float32 value adamx computes with; references use it too."""
    return float(np.float32(x))


_MAGNITUDES = st.floats(_f32(1e-3), 1e3, width=32)
_ELEMENTS = st.one_of(st.just(0.0), _MAGNITUDES, _MAGNITUDES.map(lambda x: -x))
# b1 in (0, 0.1) is left out: b1**29 * 1e-3 would fall below float32's normal
# range, and subnormals flushed to zero break the exact scaling by 2**k.
_B1 = st.one_of(st.just(0.0), st.floats(0.1, 0.99)).map(_f32)
_B2 = st.floats(0.5, 0.9999).map(_f32)


@st.composite
def _dense_sequences(draw):
    shape = draw(st.sampled_from(SHAPES))
    length = draw(st.integers(1, T_MAX))
    return draw(hnp.arrays(np.float32, (length, *shape), elements=_ELEMENTS))


@st.composite
def _sparse_sequences(draw):
    """Zeros for many steps, one nonzero gradient, then maybe more zeros."""
    shape = draw(st.sampled_from(SHAPES))
    zeros_before = draw(st.integers(0, T_MAX - 1))
    zeros_after = draw(st.integers(0, T_MAX - 1 - zeros_before))
    spike = draw(hnp.arrays(np.float32, shape, elements=_MAGNITUDES))
    sign = draw(hnp.arrays(np.float32, shape, elements=st.sampled_from([-1.0, 1.0])))
    seq = np.zeros((zeros_before + 1 + zeros_after, *shape), np.float32)
    seq[zeros_before] = spike * sign
    return seq


_SEQUENCES = st.one_of(_dense_sequences(), _sparse_sequences())


# --------------------------------------------------------------------------
# Scale invariance
# --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", INVARIANT_VARIANTS)
@given(grads=_SEQUENCES, b1=_B1, b2=_B2, k=st.integers(-10, 10))
def test_scale_invariance_power_of_two_is_exact(variant, grads, b1, b2, k):
    c = np.float32(2.0**k)
    base = _updates(variant, grads, b1, b2, 0.0)
    scaled = _updates(variant, grads * c, b1, b2, 0.0)
    seen = _seen_nonzero(grads)
    # 0/0 before any nonzero gradient is NaN in both runs; elsewhere finite.
    assert np.all(np.isfinite(base[seen]))
    np.testing.assert_array_equal(scaled, base)


@pytest.mark.parametrize("variant", INVARIANT_VARIANTS)
@given(grads=_SEQUENCES, b1=_B1, b2=_B2, log_c=st.floats(-3.0, 3.0))
def test_scale_invariance_any_positive_scale(variant, grads, b1, b2, log_c):
    c = np.float32(10.0**log_c)
    base = _updates(variant, grads, b1, b2, 0.0)
    scaled = _updates(variant, grads * c, b1, b2, 0.0)
    seen = _seen_nonzero(grads)
    assert np.all(np.isfinite(base[seen])) and np.all(np.isfinite(scaled[seen]))
    scale = _abs_ratio(variant, grads, b1, b2)[seen]
    error = np.abs(scaled[seen] - base[seen])
    allowed = 1e-5 * np.abs(base[seen]) + 1e-5 * scale
    assert np.all(error <= allowed), np.max(error / allowed)


# --------------------------------------------------------------------------
# Step bound
# --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", BOUND_VARIANTS)
@given(grads=_SEQUENCES, b1=_B1, b2=_B2, eps=st.sampled_from([0.0, 1e-8]))
def test_step_never_exceeds_the_sharp_bound(variant, grads, b1, b2, eps):
    u = _updates(variant, grads, b1, b2, eps)
    bound = _sharp_bound(variant, b1, b2, grads.shape[0])
    bound = bound.reshape((-1,) + (1,) * (grads.ndim - 1))
    bound = np.broadcast_to(bound, grads.shape)
    # With eps = 0 an element that has only seen zeros is 0/0; eps > 0 makes it 0.
    checked = _seen_nonzero(grads) | (eps > 0)
    assert np.all(np.isfinite(u[checked]))
    excess = np.abs(u[checked]) - bound[checked] * (1 + 1e-5)
    assert np.all(excess <= 0), np.max(excess)


@pytest.mark.parametrize("variant", BOUND_VARIANTS)
@given(
    shape=st.sampled_from(SHAPES),
    zeros_before=st.integers(0, T_MAX - 1),
    data=st.data(),
    b1=_B1,
    b2=_B2,
)
def test_kingma_ba_bound_at_a_lone_nonzero_gradient(
    variant, shape, zeros_before, data, b1, b2
):
    """Kingma & Ba's "most severe sparsity": zeros for t-1 steps, then g.

    Then m̂_t/sqrt(v̂_t) = sign(g) * sqrt(sum_{k<t} b2^k) / sum_{k<t} b1^k, which
    is 1 at t = 1 and tends to (1-b1)/sqrt(1-b2); it stays below their bound
    max(1, (1-b1)/sqrt(1-b2)) at every t. AMSGrad with bias correction takes
    the maximum over v̂ = 0, ..., 0, v̂_t, so it is the same; without bias
    correction it is m_t/sqrt(v_t) = (1-b1)/sqrt(1-b2) * sign(g) at every t.
    """
    g = data.draw(hnp.arrays(np.float32, shape, elements=_MAGNITUDES))
    sign = data.draw(
        hnp.arrays(np.float32, shape, elements=st.sampled_from([-1.0, 1.0]))
    )
    grads = np.zeros((zeros_before + 1, *shape), np.float32)
    grads[-1] = g * sign
    u = _updates(variant, grads, b1, b2, 0.0)[-1]

    t = zeros_before + 1
    k = np.arange(t, dtype=np.float64)
    rho = (1 - b1) / np.sqrt(1 - b2)
    if variant == "amsgrad_raw":
        expected = rho
    else:
        expected = np.sqrt(np.sum(b2**k)) / np.sum(b1**k)
    np.testing.assert_allclose(u, expected * sign, rtol=1e-5)
    assert np.all(np.abs(u) <= max(1.0, rho) * (1 + 1e-5))


@pytest.mark.parametrize("variant", BOUND_VARIANTS)
@pytest.mark.parametrize(("b1", "b2", "steps"), [(0.9, 0.99, 30), (0.5, 0.9, 20)])
def test_sharp_bound_is_attained_and_exceeds_kingma_ba(variant, b1, b2, steps):
    """g_i ∝ (b1/b2)^(t-i) turns Cauchy–Schwarz into an equality at step t.

    The gradients grow, so v̂ (and v) grow too and AMSGrad's maximum is the
    current v̂ (v): all three variants reach their sharp bound, which is
    larger than max(1, (1-b1)/sqrt(1-b2)). adamx does not clip the step.
    """
    b1, b2 = _f32(b1), _f32(b2)
    ages = np.arange(steps - 1, -1, -1, dtype=np.float64)
    grads = ((b1 / b2) ** ages).astype(np.float32)[:, None]
    u = _updates(variant, grads, b1, b2, 0.0)[-1, 0]
    sharp = _sharp_bound(variant, b1, b2, steps)[-1]
    kingma_ba = max(1.0, (1 - b1) / np.sqrt(1 - b2))
    assert sharp > 1.05 * kingma_ba
    np.testing.assert_allclose(u, sharp, rtol=1e-5)


@pytest.mark.parametrize(
    ("b1", "b2", "grads", "expected"),
    [
        # m̂_2 = (0.1*0.9*2 + 0.1*1)/0.19, v̂_2 = (0.25*4 + 0.5*1)/0.75 = 2.
        (0.9, 0.5, [2.0, 1.0], (0.28 / 0.19) / np.sqrt(2.0)),
        # One spike then zeros: momentum outlives v when b1 > sqrt(b2).
        (
            0.9,
            0.5,
            [1.0] + [0.0] * 9,
            (0.1 * 0.9**9 / (1 - 0.9**10)) / np.sqrt(0.5 * 0.5**9 / (1 - 0.5**10)),
        ),
    ],
)
def test_adam_step_exceeds_kingma_ba_value_when_the_maths_says_so(
    b1, b2, grads, expected
):
    """Hand-computed steps above max(1, (1-b1)/sqrt(1-b2)) = 1 for these betas."""
    assert expected > 1.04
    u = _updates("adam", np.asarray(grads, np.float32), b1, b2, 0.0)[-1]
    np.testing.assert_allclose(u, expected, rtol=1e-5)
