"""adamx.low_precision_params: exact landings, unbiased rounding, composition.

Expected values come from NumPy: the parameter dtype's round-to-nearest of a
float64 sum (exact for three 16-bit values that do not overflow), and the two
neighbours of a value read off the dtype's bit patterns.
"""

from __future__ import annotations

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from hypothesis import given

import adamx
from adamx.low_precision import update_landing_on

DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}
UINT = {"bfloat16": np.uint16, "float16": np.uint16}


def _values(name: str, n: int) -> st.SearchStrategy:
    """n finite values of the dtype from random bit patterns: every binade,
    subnormals, both zeros, and the values either side of a power of two."""
    dtype = np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype("float16")

    def from_bits(bits):
        values = np.asarray(bits, np.uint16).view(dtype)
        return np.where(np.isfinite(values.astype(np.float32)), values, dtype.type(0))

    return st.lists(st.integers(0, 0xFFFF), min_size=n, max_size=n).map(from_bits)


def _small(name: str, n: int) -> st.SearchStrategy:
    """Values near a given scale: updates and compensations that matter."""
    return st.tuples(_values(name, n), st.integers(-30, 0)).map(
        lambda pair: (pair[0].astype(np.float32) * np.float32(2.0 ** pair[1])).astype(
            pair[0].dtype
        )
    )


def _flushed(x: np.ndarray) -> np.ndarray:
    """``x`` with float32 subnormals flushed to zero, as XLA computes."""
    tiny = np.finfo(np.float32).tiny
    return np.where(np.abs(x) < tiny, np.zeros_like(x), x)


def _landing(p32: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Where apply_updates lands: the target, unless the float32 step to it is
    a subnormal, which XLA flushes to 0 (update_landing_on's exception)."""
    with np.errstate(invalid="ignore"):
        flushed = np.abs(target - p32.astype(np.float64)) < np.finfo(np.float32).tiny
    return np.where(flushed, p32.astype(np.float64), target)


def _nearest(x64: np.ndarray, dtype) -> np.ndarray:
    """Round to nearest even in ``dtype`` (via float64, exact for these sums)."""
    return x64.astype(dtype).astype(np.float64)


@pytest.mark.parametrize("name", DTYPES)
@given(data=st.data())
def test_the_rewritten_update_lands_exactly(name, data):
    dtype = DTYPES[name]
    p = data.draw(_values(name, 16))
    u = data.draw(st.one_of(_values(name, 16), _small(name, 16)))
    c = data.draw(_small(name, 16))
    opt = adamx.low_precision_params(optax.identity())
    params = jnp.asarray(p, dtype)
    state = opt.init(params)
    state = state._replace(compensation=jnp.asarray(c, dtype))
    updates, new_state = opt.update(jnp.asarray(u, dtype), state, params)
    landed = np.asarray(optax.apply_updates(params, updates)).astype(np.float64)
    # float32 forms the sums, in Kahan's order: u + c, then p + (u + c).
    # XLA flushes float32 subnormals to zero, in operands and results, and
    # bfloat16's subnormals are float32's: the reference flushes them too.
    p32, u32, c32 = (_flushed(x.astype(np.float32)) for x in (p, u, c))
    step32 = _flushed(u32 + c32)
    total32 = _flushed(p32 + step32)
    with np.errstate(over="ignore"):  # float16 overflows to inf, excluded below
        target = _flushed(_nearest(total32.astype(np.float64), p.dtype))
    finite = np.isfinite(target) & np.isfinite(total32)
    assert updates.dtype == jnp.float32  # why: adamx.low_precision.update_landing_on
    np.testing.assert_array_equal(landed[finite], _landing(p32, target)[finite])
    with np.errstate(over="ignore", invalid="ignore"):
        difference = _flushed((p32.astype(np.float64) - target).astype(np.float32))
        remainder = _flushed(difference + step32).astype(p.dtype)
    np.testing.assert_array_equal(
        np.asarray(new_state.compensation)[finite], remainder[finite]
    )


@given(data=st.data())
def test_landing_on_any_neighbour_target(data):
    """update_landing_on reaches every value near the parameter, across binades."""
    p = data.draw(_values("bfloat16", 32))
    steps = data.draw(st.lists(st.integers(-3, 3), min_size=32, max_size=32))
    target = p.copy()
    for i, k in enumerate(steps):
        for _ in range(abs(k)):
            target[i] = np.nextafter(
                target[i].astype(np.float32),
                np.float32(np.inf if k > 0 else -np.inf),
            ).astype(target.dtype)
    target = np.where(np.isfinite(target.astype(np.float32)), target, p)
    param = jnp.asarray(p, jnp.bfloat16)
    # XLA flushes float32 (so bfloat16) subnormals: such a target lands on 0.
    want = jnp.asarray(_flushed(target.astype(np.float32)))
    update = update_landing_on(param, want)
    landed = optax.apply_updates(param, update)
    np.testing.assert_array_equal(
        np.asarray(landed).astype(np.float32), np.asarray(want)
    )


def _neighbours(x: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The values of ``dtype`` either side of positive ``x``: next bit patterns."""
    assert np.all(x > 0)
    near = x.astype(dtype)
    up = (near.view(np.uint16) + np.uint16(1)).view(dtype)
    down = (near.view(np.uint16) - np.uint16(1)).view(dtype)
    below = near.astype(np.float64) <= x
    low = np.where(below, near, down).astype(np.float64)
    high = np.where(below, up, near).astype(np.float64)
    return low, high


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("step", [1e-3, -3.7e-4, 2.5e-6])
def test_stochastic_rounding_is_unbiased(name, step):
    dtype = DTYPES[name]
    n = 1 << 16
    base = np.linspace(0.5, 4.0, n).astype(np.float32)
    params = jnp.asarray(base, dtype)
    opt = adamx.low_precision_params(optax.identity(), "stochastic", seed=3)
    grads = jnp.full((n,), step, jnp.float32)  # an update the dtype cannot hold
    updates, state = opt.update(grads, opt.init(params), params)
    landed = np.asarray(optax.apply_updates(params, updates)).astype(np.float64)
    exact = np.asarray(params).astype(np.float64) + step
    low, high = _neighbours(exact, np.asarray(params).dtype)
    assert np.all((landed == low) | (landed == high))
    # Unbiased: the mean error is within 4 standard errors of 0.
    error = landed - exact
    spread = np.sqrt(np.mean((high - exact) * (exact - low)) / n)
    assert abs(np.mean(error)) < 4 * spread + 1e-12
    assert int(state.count) == 1
    # Another step draws other noise.
    again, _ = opt.update(grads, state, params)
    assert not np.array_equal(np.asarray(again), np.asarray(updates))


def test_kahan_follows_float32_where_plain_bfloat16_stalls():
    """Small SGD steps: bf16 + Kahan stays within a bf16 spacing of the
    float32 run, while plain bf16 does not move at all."""
    lr, steps = 1e-4, 400
    w32 = jnp.linspace(1.0, 2.0, 64)
    g = jnp.full((64,), 0.7)
    opt = adamx.low_precision_params(optax.sgd(lr))
    w = w32.astype(jnp.bfloat16)
    plain = w
    state = opt.init(w)
    update = jax.jit(opt.update)
    for _ in range(steps):
        u, state = update(g.astype(jnp.bfloat16), state, w)
        w = optax.apply_updates(w, u)
        plain = optax.apply_updates(plain, (-lr * g).astype(jnp.bfloat16))
    start = np.asarray(w32.astype(jnp.bfloat16)).astype(np.float64)
    exact = start - steps * np.float64(np.float32(lr) * np.float32(0.7))
    spacing = 2.0 ** (np.floor(np.log2(np.abs(exact))) - 7)
    error = np.abs(np.asarray(w).astype(np.float64) - exact) / spacing
    assert np.max(error) <= 0.5 + 1e-2  # the nearest bfloat16 to the exact sum
    np.testing.assert_array_equal(
        np.asarray(plain), np.asarray(w32.astype(jnp.bfloat16))
    )


def _spacing(x: np.ndarray, dtype) -> np.ndarray:
    """The spacing of ``dtype`` at each x, its smallest normal's below that."""
    info = ml_dtypes.finfo(dtype)
    magnitude = np.maximum(np.abs(x.astype(np.float64)), float(info.smallest_normal))
    return 2.0 ** (np.floor(np.log2(magnitude)) - info.nmant)


@pytest.mark.parametrize("name", DTYPES)
@given(data=st.data())
def test_int8_compensation_lands_exactly_and_codes_the_remainder(name, data):
    """The landing is round-to-nearest of theta + u + c(q); q is the remainder
    in 254ths of the new parameter's spacing, rounded to one of its two
    neighbouring integers."""
    dtype = DTYPES[name]
    np_dtype = np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.float16
    p = data.draw(_values(name, 16))
    u = data.draw(_small(name, 16))
    q = np.asarray(
        data.draw(st.lists(st.integers(-127, 127), min_size=16, max_size=16))
    )
    opt = adamx.low_precision_params(optax.identity(), compensation_dtype="int8")
    params = jnp.asarray(p, dtype)
    state = opt.init(params)
    assert state.compensation.dtype == jnp.int8
    state = state._replace(compensation=jnp.asarray(q, jnp.int8))
    updates, new_state = opt.update(jnp.asarray(u, dtype), state, params)
    landed = np.asarray(optax.apply_updates(params, updates)).astype(np.float64)
    p32, u32 = (_flushed(x.astype(np.float32)) for x in (p, u))
    # the code's unit, as the wrapper computes it: flushed when subnormal
    unit_p = _flushed((_spacing(p32, np_dtype) / 254).astype(np.float32))
    c32 = _flushed((q * unit_p.astype(np.float64)).astype(np.float32))
    step32 = _flushed(u32 + c32)
    total32 = _flushed(p32 + step32)
    with np.errstate(over="ignore"):
        target = _flushed(_nearest(total32.astype(np.float64), np_dtype))
    ok = np.isfinite(target) & np.isfinite(total32) & (np.abs(target) > 0)
    np.testing.assert_array_equal(landed[ok], _landing(p32, target)[ok])
    unit = _flushed((_spacing(target, np_dtype) / 254).astype(np.float32))
    kept = ok & (unit > 0)  # a float32 subnormal unit is flushed: nothing kept
    with np.errstate(over="ignore", invalid="ignore"):
        difference = _flushed((p32.astype(np.float64) - target).astype(np.float32))
        remainder = _flushed(difference + step32).astype(np.float64)
    scaled = remainder / np.where(kept, unit, 1)
    code = np.asarray(new_state.compensation).astype(np.float64)
    np.testing.assert_array_less(np.abs(code - scaled)[kept], 1 + 1e-3)
    np.testing.assert_array_equal(code[ok & (unit == 0)], 0)
    assert np.all(np.abs(code) <= 127)


@pytest.mark.parametrize("name", DTYPES)
def test_int8_compensation_loses_no_step_on_average(name):
    """SGD steps of 2^-21, an eighth of a code unit in float16 and a 64th in
    bfloat16: theta + c(q) follows the exact sum within the stochastic
    coding's noise (a random walk of 1/254ths of a spacing), and the mean
    error is within 4 standard errors of 0."""
    dtype = DTYPES[name]
    np_dtype = np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.float16
    n, steps, step = 4096, 300, 2.0**-21
    params = jnp.linspace(1.0, 1.99, n).astype(dtype)
    start = np.asarray(params).astype(np.float64)
    opt = adamx.low_precision_params(optax.sgd(1.0), compensation_dtype="int8")
    grads = jnp.full(n, -step, jnp.float32)

    @jax.jit
    def train(params, state):
        def body(_, carry):
            params, state = carry
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        return jax.lax.fori_loop(0, steps, body, (params, state))

    params, state = train(params, opt.init(params))
    held = np.asarray(params).astype(np.float64) + np.asarray(
        state.compensation
    ).astype(np.float64) * (_spacing(np.asarray(params), np_dtype) / 254)
    error = held - (start + steps * step)
    unit = _spacing(np.asarray(params), np_dtype) / 254
    # Each step's coding error is independent, of variance at most 1/4 unit^2:
    # a random walk of standard deviation at most sqrt(steps) / 2 units.
    walk = np.sqrt(steps) / 2
    assert np.max(np.abs(error) / unit) <= 6 * walk
    assert abs(np.mean(error / unit)) < 4 * walk / np.sqrt(n)


def test_other_leaves_pass_through_bit_for_bit():
    params = {
        "f32": jnp.linspace(-1.0, 1.0, 5),
        "c64": jnp.ones(3, jnp.complex64),
        "i32": jnp.arange(4),
        "none": None,
        "bf16": jnp.ones(2, jnp.bfloat16),
    }
    grads = {
        "f32": jnp.full(5, 1e-9),
        "c64": jnp.full(3, 1e-9 + 1e-9j, jnp.complex64),
        "i32": jnp.ones(4, jnp.int32),
        "none": None,
        "bf16": jnp.full(2, 1e-4, jnp.bfloat16),
    }
    opt = adamx.low_precision_params(optax.identity())
    state = opt.init(params)
    assert state.compensation["f32"].shape == state.compensation["i32"].shape == ()
    updates, _ = opt.update(grads, state, params)
    for key in ("f32", "c64", "i32"):
        np.testing.assert_array_equal(np.asarray(updates[key]), np.asarray(grads[key]))
    assert updates["none"] is None


def test_non_finite_steps_pass_through():
    params = jnp.ones(3, jnp.bfloat16)
    opt = adamx.low_precision_params(optax.identity())
    state = opt.init(params)
    grads = jnp.asarray([np.nan, np.inf, 1.0], jnp.bfloat16)
    updates, new_state = opt.update(grads, state, params)
    assert np.isnan(float(updates[0])) and np.isinf(float(updates[1]))
    np.testing.assert_array_equal(np.asarray(new_state.compensation[:2]), [0, 0])


def test_construction_and_update_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"rounding must be"):
        adamx.low_precision_params(optax.identity(), rounding="nearest")
    with pytest.raises(ValueError, match=r"seed=-1\): seed must be an int >= 0"):
        adamx.low_precision_params(optax.identity(), seed=-1)
    with pytest.raises(
        ValueError, match=r'compensation_dtype must be None .* or "int8"'
    ):
        adamx.low_precision_params(optax.identity(), compensation_dtype="int4")
    with pytest.raises(ValueError, match=r'needs rounding="kahan"'):
        adamx.low_precision_params(
            optax.identity(), "stochastic", compensation_dtype="int8"
        )
    opt = adamx.low_precision_params(optax.identity())
    with pytest.raises(ValueError, match="update needs params"):
        opt.update(jnp.ones(2), opt.init(jnp.ones(2, jnp.bfloat16)))


def _grads(params, t):
    return jax.tree.map(
        lambda p: jnp.sin(p.astype(jnp.float32) * (t + 1)).astype(p.dtype), params
    )


def _train(opt, steps, params):
    update = jax.jit(opt.update)
    state = opt.init(params)
    for t in range(steps):
        grads = _grads(params, t)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


ROUNDINGS = {
    "kahan": {"rounding": "kahan"},
    "kahan_int8": {"rounding": "kahan", "compensation_dtype": "int8"},
    "stochastic": {"rounding": "stochastic"},
}


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_composes_with_optax_and_adamx_wrappers(rounding):
    params = {"w": jnp.linspace(-1, 1, 256).astype(jnp.bfloat16).reshape(16, 16)}
    inner = adamx.nonfinite_policy(
        adamx.with_stats(
            # float32 hyperparameters: bfloat16 would round b2 = 0.999 to 1,
            # which adamx refuses.
            optax.inject_hyperparams(adamx.adamw, hyperparam_dtype=jnp.float32)(
                learning_rate=1e-3
            ),
            every=2,
        )
    )
    opt = optax.MultiSteps(
        adamx.low_precision_params(inner, seed=1, **ROUNDINGS[rounding]),
        every_k_schedule=2,
    )
    trained, state = _train(opt, 6, params)
    assert trained["w"].dtype == jnp.bfloat16
    assert not np.array_equal(np.asarray(trained["w"]), np.asarray(params["w"]))
    planned = opt.init(
        jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    )
    assert jax.tree.structure(planned) == jax.tree.structure(state)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_resume_from_saved_state_is_bit_for_bit(rounding):
    """The state through host arrays (what a checkpoint holds) and back."""
    params = {"w": jnp.linspace(0.1, 3, 64).astype(jnp.bfloat16)}
    opt = adamx.low_precision_params(
        adamx.adam(1e-3, mu_dtype="int8"), **ROUNDINGS[rounding]
    )
    whole, whole_state = _train(opt, 8, params)
    half, half_state = _train(opt, 4, params)
    saved = jax.tree.map(np.asarray, (half, half_state))
    restored_params, restored_state = jax.tree.map(jnp.asarray, saved)
    update = jax.jit(opt.update)
    for t in range(4, 8):
        grads = _grads(restored_params, t)
        updates, restored_state = update(grads, restored_state, restored_params)
        restored_params = optax.apply_updates(restored_params, updates)
    for a, b in zip(
        jax.tree.leaves((whole, whole_state)),
        jax.tree.leaves((restored_params, restored_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
