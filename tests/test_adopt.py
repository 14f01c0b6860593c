"""ADOPT (adamx.transforms.adopt) against the paper's equations and optax.contrib.

* A float64 NumPy statement of Taniguchi et al. (2024), written here, is run
  on a random gradient stream over a pytree of several shapes, a scalar and a
  complex leaf, for every combination of ``use_clipping`` and ``nesterov``; adamx must
  match it in float32 and, under ``jax.enable_x64``, to 1e-10 in float64.
* ``optax.contrib.adopt`` and ``scale_by_adopt`` are run side by side with
  adamx on a small MLP regression whose parameters are fed back.
* Storage dtypes, float16 zero gradients, injected hyperparameters and
  construction errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest

from adamx.transforms.adopt import (
    ScaleByAdoptState,
    adopt,
    adoptw,
    scale_by_adopt,
)

STEPS = 120
SHAPES = {"kernel": (3, 4), "bias": (5,), "scalar": (), "cube": (2, 3, 2)}

# ---------------------------------------------------------------------------
# The paper's algorithm, float64, one leaf at a time.
# ---------------------------------------------------------------------------


def _abs_sq(g: np.ndarray) -> np.ndarray:
    return np.real(g * np.conj(g))


def _clip(x: np.ndarray, c: float) -> np.ndarray:
    """Clip to [-c, c]; a complex value is scaled down to modulus c."""
    if np.iscomplexobj(x):
        modulus = np.abs(x)
        safe = np.where(modulus > c, modulus, 1.0)
        return np.where(modulus > c, x * (c / safe), x)
    return np.clip(x, -c, c)


def adopt_reference(
    grads: np.ndarray,
    b1: float,
    b2: float,
    eps: float,
    eps_root: float,
    clip: Callable[[int], float] | None,
    nesterov: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ADOPT on ``grads[0], grads[1], ...``: (updates, final m, final v).

    v_0 = |g_0|^2, m_0 = 0 and the update for g_0 is 0. For t >= 1:
      g~_t = clip(g_t / max(sqrt(v_{t-1} + eps_root), eps), c_t)
      m_t  = b1 m_{t-1} + (1 - b1) g~_t
      u_t  = m_t, or b1 m_t + (1 - b1) g~_t with Nesterov momentum
      v_t  = b2 v_{t-1} + (1 - b2) |g_t|^2
    """
    wide = np.complex128 if np.iscomplexobj(grads) else np.float64
    grads = grads.astype(wide)
    v = _abs_sq(grads[0])
    m = np.zeros_like(grads[0])
    updates = [np.zeros_like(grads[0])]
    for t in range(1, len(grads)):
        g = grads[t]
        normalised = g / np.maximum(np.sqrt(v + eps_root), eps)
        if clip is not None:
            normalised = _clip(normalised, clip(t))
        m = b1 * m + (1 - b1) * normalised
        updates.append(b1 * m + (1 - b1) * normalised if nesterov else m)
        v = b2 * v + (1 - b2) * _abs_sq(g)
    return np.stack(updates), m, v


# ---------------------------------------------------------------------------
# Inputs and runners
# ---------------------------------------------------------------------------


def _gradient_stream(real: Any, complex_: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Gradients with a leading step axis; each step and leaf has its own scale."""
    rng = np.random.default_rng(seed)
    stream = {}
    for name, shape in SHAPES.items():
        scale = 10.0 ** rng.uniform(-2.0, 2.0, (STEPS,) + (1,) * len(shape))
        stream[name] = (scale * rng.normal(size=(STEPS, *shape))).astype(real)
    z = rng.normal(size=(STEPS, 2, 2)) + 1j * rng.normal(size=(STEPS, 2, 2))
    stream["phase"] = (10.0 ** rng.uniform(-1.0, 1.0, (STEPS, 1, 1)) * z).astype(
        complex_
    )
    return stream


def _run_stream(tx: optax.GradientTransformation, stream: dict[str, np.ndarray]):
    """(updates stacked over steps, final state) for a fixed gradient stream."""
    params = {name: jnp.zeros_like(g[0]) for name, g in stream.items()}

    def step(state, grads):
        updates, state = tx.update(grads, state)
        return state, updates

    @jax.jit
    def run(state, grads):
        final, updates = jax.lax.scan(step, state, grads)
        return updates, final

    return run(tx.init(params), jax.tree.map(jnp.asarray, stream))


def _quarter(t: int) -> float:
    return t**0.25


# name: (adamx keyword arguments, reference clip function or None).
REFERENCE_CASES = {
    "clip": ({}, _quarter),
    "clip-nesterov": ({"nesterov": True}, _quarter),
    "noclip": ({"use_clipping": False}, None),
    "noclip-nesterov": ({"use_clipping": False, "nesterov": True}, None),
    "clip_value_fn": (
        {"clip_value_fn": lambda t: 0.5 + 0.01 * t},
        lambda t: 0.5 + 0.01 * t,
    ),
}
HYPERPARAMETERS = {"b1": 0.85, "b2": 0.99, "eps": 1e-6, "eps_root": 1e-8}


def _check_reference(case: str, real: Any, complex_: Any, hp, rtol: float) -> None:
    kwargs, clip = REFERENCE_CASES[case]
    stream = _gradient_stream(real, complex_)
    updates, state = _run_stream(scale_by_adopt(**HYPERPARAMETERS, **kwargs), stream)
    assert isinstance(state, ScaleByAdoptState)
    assert int(state.count) == STEPS
    # For a decay given as a Python float adamx forms 1 - b from the decimal
    # before rounding to float32, so the reference gets the decimal decays at
    # every width and ``hp`` (the rounding) only for eps and eps_root.
    reference_hp = {
        k: v if k in ("b1", "b2") else hp(v) for k, v in HYPERPARAMETERS.items()
    }
    nesterov = kwargs.get("nesterov", False)
    for name, grads in stream.items():
        expected_u, expected_m, expected_v = adopt_reference(
            grads, clip=clip, nesterov=nesterov, **reference_hp
        )
        for what, actual, expected in (
            ("updates", updates[name], expected_u),
            ("mu", state.mu[name], expected_m),
            ("nu", state.nu[name], expected_v),
        ):
            actual = np.asarray(actual)
            assert actual.dtype == grads.dtype or what == "nu", (what, name)
            # The scale is the largest magnitude the compared array reaches, so
            # that an entry near zero (m and u change sign) is not held to a
            # relative precision that no computation at this width has.
            atol = rtol * float(np.max(np.abs(expected)))
            np.testing.assert_allclose(
                actual, expected, rtol=rtol, atol=atol, err_msg=f"{what}[{name}]"
            )
        # The step-1 update is exactly zero: g_0 only initialises v.
        assert not np.any(np.asarray(updates[name][0]))


# float32: each step rounds a handful of float32 operations (2**-24 = 6e-8
# relative each) into m, v and u; both averages forget old errors
# geometrically, so errors stay at a few ulps of the largest values (measured
# worst: 3.0e-6 of the largest value, where clipping is active). 2e-5 leaves a
# margin of 6x; a wrong term, ordering or constant moves results by >= 1e-3.
# The reference gets the decays as decimals and eps, eps_root rounded to
# float32, as adamx holds them (see _check_reference).
@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_matches_reference_float32(case: str) -> None:
    _check_reference(
        case, np.float32, np.complex64, lambda x: float(np.float32(x)), 2e-5
    )


@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_matches_reference_float64(case: str) -> None:
    with jax.enable_x64(True):
        _check_reference(case, np.float64, np.complex128, float, 1e-10)


def test_complex_clip_keeps_the_phase() -> None:
    # v_0 = |1|^2 = 1, so g_1 = 3 + 4i normalises to itself, modulus 5, and is
    # clipped to modulus 1: (3 + 4i) / 5. Then m_1 = 0.1 * (0.6 + 0.8i).
    tx = scale_by_adopt(clip_value_fn=lambda t: 1.0)
    update = jax.jit(tx.update)
    state = tx.init(jnp.zeros(1, jnp.complex64))
    _, state = update(jnp.ones(1, jnp.complex64), state)
    u, state = update(jnp.array([3.0 + 4.0j], jnp.complex64), state)
    np.testing.assert_allclose(np.asarray(u), [0.06 + 0.08j], rtol=1e-6)
    assert state.nu.dtype == jnp.float32


# ---------------------------------------------------------------------------
# Parity with optax.contrib on a problem whose parameters are fed back
# ---------------------------------------------------------------------------

PARITY_STEPS = 150
# Both libraries compute ADOPT in float32 with the same operations in a
# slightly different order (adamx's where-guarded first step, its eps_root
# addition of 0.0); agreement is to float32 rounding carried along a
# trajectory, well inside 5e-5.
PARITY_RTOL = 5e-5


def _mlp():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(32, 4)), jnp.float32)
    y = jnp.sin(x @ jnp.asarray([[1.0], [-2.0], [0.5], [1.5]], jnp.float32))
    params = {
        "w1": jnp.asarray(rng.normal(0.0, 0.5, (4, 8)), jnp.float32),
        "b1": jnp.asarray(rng.normal(0.0, 0.1, (8,)), jnp.float32),
        "w2": jnp.asarray(rng.normal(0.0, 0.5, (8, 1)), jnp.float32),
        "b2": jnp.asarray(rng.normal(0.0, 0.1, (1,)), jnp.float32),
    }

    def loss(p):
        hidden = jnp.tanh(x @ p["w1"] + p["b1"][None, :])
        return jnp.mean(jnp.square(hidden @ p["w2"] + p["b2"][None, :] - y))

    return params, jax.grad(loss)


def _trajectory(tx: optax.GradientTransformation):
    """Parameters and (mu, nu) after every step, stacked along axis 0."""
    params, grad = _mlp()

    def step(carry, _):
        params, state = carry
        updates, state = tx.update(grad(params), state, params)
        params = optax.apply_updates(params, updates)
        direction = state[0]  # chain(direction, ..., learning rate)
        return (params, state), (params, direction.mu, direction.nu)

    run = jax.jit(lambda c: jax.lax.scan(step, c, None, length=PARITY_STEPS)[1])
    return run((params, tx.init(params)))


DECAY_MASK = {"w1": True, "b1": False, "w2": True, "b2": False}


def _warmup_cosine():
    return optax.warmup_cosine_decay_schedule(0.0, 2e-2, 20, PARITY_STEPS, 1e-4)


PARITY_CASES: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
    "adopt": (lambda: adopt(1e-2), lambda: optax.contrib.adopt(1e-2)),
    "noclip": (
        lambda: adopt(1e-3, use_clipping=False),
        lambda: optax.contrib.adopt(1e-3, use_clipping=False),
    ),
    "nesterov": (
        lambda: adopt(1e-2, nesterov=True),
        lambda: optax.contrib.adopt(1e-2, nesterov=True),
    ),
    "noclip-nesterov": (
        lambda: adopt(1e-3, use_clipping=False, nesterov=True),
        lambda: optax.contrib.adopt(1e-3, use_clipping=False, nesterov=True),
    ),
    "hyperparameters-clip_value_fn": (
        lambda: adopt(
            5e-3, b1=0.8, b2=0.99, eps=1e-5, clip_value_fn=lambda t: 0.2 * jnp.sqrt(t)
        ),
        lambda: optax.contrib.adopt(
            5e-3, b1=0.8, b2=0.99, eps=1e-5, clip_value_fn=lambda t: 0.2 * jnp.sqrt(t)
        ),
    ),
    "adoptw-mask-lr_schedule": (
        lambda: adoptw(_warmup_cosine(), weight_decay=0.1, mask=DECAY_MASK),
        lambda: optax.chain(
            optax.contrib.scale_by_adopt(),
            optax.add_decayed_weights(0.1, DECAY_MASK),
            optax.scale_by_learning_rate(_warmup_cosine()),
        ),
    ),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_matches_optax_contrib(case: str) -> None:
    make_adamx, make_optax = PARITY_CASES[case]
    actual = _trajectory(make_adamx())
    expected = _trajectory(make_optax())
    for (path, leaf), want in zip(
        jax.tree_util.tree_leaves_with_path(actual),
        jax.tree_util.tree_leaves(expected),
        strict=True,
    ):
        leaf, want = np.asarray(leaf), np.asarray(want)
        assert np.all(np.isfinite(want)), jax.tree_util.keystr(path)
        atol = PARITY_RTOL * float(np.max(np.abs(want)))
        np.testing.assert_allclose(
            leaf, want, rtol=PARITY_RTOL, atol=atol, err_msg=jax.tree_util.keystr(path)
        )
    # The parameters moved, so the comparison is not of two idle runs.
    params = expected[0]
    assert any(not np.allclose(p[-1], p[0]) for p in jax.tree.leaves(params))


# ---------------------------------------------------------------------------
# Dtypes, zero gradients, injected hyperparameters, errors
# ---------------------------------------------------------------------------


def test_bfloat16_storage_keeps_dtypes_and_values() -> None:
    stream = _gradient_stream(np.float32, np.complex64)
    del stream["phase"]  # bfloat16 holds no complex first moment
    stream = {name: g[:20] for name, g in stream.items()}
    narrow = scale_by_adopt(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    updates, state = _run_stream(narrow, stream)
    for name, grads in stream.items():
        assert state.mu[name].dtype == jnp.bfloat16
        assert state.nu[name].dtype == jnp.bfloat16
        assert updates[name].dtype == jnp.float32
        expected, _, _ = adopt_reference(grads, 0.9, 0.9999, 1e-6, 0.0, _quarter, False)
        # bfloat16 keeps 8 significant bits (relative 2**-8 = 4e-3) of each
        # stored moment; errors of a few of those stay within 5e-2 of the
        # largest update.
        atol = 5e-2 * float(np.max(np.abs(expected)))
        np.testing.assert_allclose(updates[name], expected, rtol=5e-2, atol=atol)


def test_bfloat16_params_give_bfloat16_updates_and_state() -> None:
    tx = scale_by_adopt()
    params = {"w": jnp.ones((3, 2), jnp.bfloat16)}
    state, update = tx.init(params), jax.jit(tx.update)
    for g in (1.0, -2.0, 0.5):
        updates, state = update({"w": jnp.full((3, 2), g, jnp.bfloat16)}, state)
    assert updates["w"].dtype == jnp.bfloat16
    assert state.mu["w"].dtype == jnp.bfloat16
    assert state.nu["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"use_clipping": False}, {"nesterov": True}, {"nu_dtype": jnp.float32}],
    ids=["clip", "noclip", "nesterov", "nu_float32"],
)
def test_float16_zero_gradients_give_finite_zero_updates(kwargs) -> None:
    tx = scale_by_adopt(**kwargs)
    params = {"w": jnp.ones((4,), jnp.float16), "s": jnp.ones((), jnp.float16)}
    state, update = tx.init(params), jax.jit(tx.update)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for _ in range(4):
        updates, state = update(zeros, state)
        for leaf in jax.tree.leaves(updates):
            assert leaf.dtype == jnp.float16
            assert np.all(np.asarray(leaf) == 0)
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))


def test_injected_hyperparameters_match_constants() -> None:
    # inject_hyperparams passes b1, b2 and the learning rate as arrays that
    # are traced inside the jitted loop.
    injected = optax.inject_hyperparams(adopt)(learning_rate=1e-2, b1=0.8, b2=0.99)
    constant = optax.contrib.adopt(1e-2, b1=0.8, b2=0.99)
    params, grad = _mlp()

    def run(tx):
        def step(carry, _):
            p, s = carry
            u, s = tx.update(grad(p), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=40)
        return p

    actual, expected = jax.jit(lambda: (run(injected), run(constant)))()
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, e, rtol=PARITY_RTOL, atol=1e-6)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: scale_by_adopt(b1=1.5),
            "scale_by_adopt(b1=1.5): b1 must be in [0, 1)",
        ),
        (
            lambda: scale_by_adopt(b2=1.0),
            "scale_by_adopt(b2=1.0): b2 must be in [0, 1)",
        ),
        (
            lambda: scale_by_adopt(eps=-1.0),
            "scale_by_adopt(eps=-1.0): eps must be >= 0",
        ),
        (
            lambda: scale_by_adopt(eps_root=-1.0),
            "scale_by_adopt(eps_root=-1.0): eps_root must be >= 0",
        ),
        (
            lambda: scale_by_adopt(nu_dtype="int32"),
            "scale_by_adopt(nu_dtype='int32'): state must be stored in a floating",
        ),
        (lambda: adopt(1e-3, b1=-0.1), "adopt(b1=-0.1): b1 must be in [0, 1)"),
        (
            lambda: adopt(-1.0),
            "adopt(learning_rate=-1.0): learning_rate must be >= 0",
        ),
        (
            lambda: adoptw(1e-3, weight_decay=-0.1),
            "adoptw(weight_decay=-0.1): weight_decay must be >= 0",
        ),
    ],
)
def test_construction_errors_quote_the_call(build, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build()
