"""LAMB (adamx.transforms.lamb) against the paper's update rule and optax.

What every catalogued transform shares (traced hyperparameters, storage
dtypes, float16, construction errors) is tested table-driven in test_matrix,
test_uniform_options and test_errors; this file holds what is LAMB's own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from catalogue import moment_view
from harness import (
    STEPS,
    as_float32,
    assert_close_scaled,
    compare_trajectories,
    random_inputs,
    reference_hyperparameters,
    run_scan,
    trajectories,
)

from adamx.transforms.lamb import lamb, scale_by_lamb

# ---------------------------------------------------------------------------
# Float64 reference: You et al. (2020), Algorithm 2 (LAMB) with phi the
# identity, Adam's bias correction, and a trust ratio of 1 where either norm
# is 0 (optax's convention).
# ---------------------------------------------------------------------------


def norm(x: np.ndarray) -> float:
    return float(np.sqrt(np.sum(np.abs(x) ** 2)))


def lamb_reference(
    p0, grads, *, b1, b2, eps, eps_root, weight_decay, nesterov, learning_rate=None
):
    """One leaf's updates, final (m, v) and parameters.

    With ``learning_rate`` the parameters move by ``-learning_rate * u`` after
    every step; without, every step sees ``p0``.
    """
    p = p0.copy()
    m = np.zeros_like(grads[0])
    v = np.zeros(grads.shape[1:])
    updates = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * np.abs(g) ** 2
        if nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        a = m_hat / (np.sqrt(v_hat + eps_root) + eps) + weight_decay * p
        p_norm, a_norm = norm(p), norm(a)
        ratio = 1.0 if p_norm == 0 or a_norm == 0 else p_norm / a_norm
        u = ratio * a
        if learning_rate is None:
            updates.append(u)
        else:
            updates.append(-learning_rate * u)
            p = p - learning_rate * u
    return np.stack(updates), (m, v), p


def _matrices(params):
    return jax.tree.map(lambda x: np.ndim(x) >= 2, params)


# name -> (kwargs, which leaves are decayed: None for all)
CONFIGS = {
    "defaults": ({}, None),
    "weight_decay": ({"weight_decay": 0.1}, None),
    "mask-fn": ({"weight_decay": 0.1, "mask": _matrices}, "matrices"),
    "nesterov-eps_root-mask-tree": (
        {"weight_decay": 0.05, "eps_root": 1e-6, "nesterov": True, "mask": "tree"},
        "vectors",
    ),
}
DEFAULTS = {"b1": 0.9, "b2": 0.999, "eps": 1e-6, "eps_root": 0.0, "weight_decay": 0.0}
# float32: moments to a few ulps (see test_adam), then two norms over at most
# 24 elements and one division: a few more ulps (measured worst: 7.5e-7).
# 5e-6 leaves a margin of 6x; a wrong norm, a missing decay term or a ratio
# of the wrong leaf moves the update by far more, and so does a reference
# given 1 - float32(b2) instead of the decimal 1 - b2 adamx forms (6.6e-6;
# see reference_hyperparameters). float64: the same argument with 2**-53.
RTOL = {False: 5e-6, True: 1e-10}
# Fed back, a float32 parameter also picks up one rounding per step; its
# drift over 120 steps stays within ~120 ulps of the largest value.
PARAM_RTOL = {False: 5e-5, True: 1e-10}


def _inputs(seed: int, x64: bool):
    """The random tree, plus a zero-parameter leaf and a zero-gradient leaf."""
    real, cplx = (np.float64, np.complex128) if x64 else (np.float32, np.complex64)
    extra = {"zero_param": (3,), "no_grad": (2, 2)}
    params, grads = random_inputs(seed, real, cplx, extra=extra)
    params["zero_param"][...] = 0
    grads["no_grad"][...] = 0
    return params, grads


def _setup(config: str, params):
    kwargs, decayed = CONFIGS[config]
    kwargs = dict(kwargs)
    if kwargs.get("mask") == "tree":
        kwargs["mask"] = jax.tree.map(lambda x: np.ndim(x) < 2, params)
    hp = {**DEFAULTS, **{k: v for k, v in kwargs.items() if k in DEFAULTS}}

    def decay_of(name: str) -> float:
        ndim = np.ndim(params[name])
        skip = (decayed == "matrices" and ndim < 2) or (
            decayed == "vectors" and ndim >= 2
        )
        return 0.0 if skip else hp["weight_decay"]

    return kwargs, hp, decay_of


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_direction_matches_float64_reference(config: str, x64: bool) -> None:
    params, grads = _inputs(len(config), x64)
    kwargs, hp, decay_of = _setup(config, params)
    with jax.enable_x64(x64):
        updates, state, _ = run_scan(scale_by_lamb(**kwargs), params, grads)
    adam_state = state[0]
    assert np.asarray(adam_state.count).dtype == np.int32
    assert int(adam_state.count) == STEPS
    wide = (lambda x: x) if x64 else as_float32
    ref_hp = reference_hyperparameters(hp, x64)
    for name, g in grads.items():
        expected, (m, v), _ = lamb_reference(
            params[name].astype(np.complex128 if np.iscomplexobj(g) else np.float64),
            g.astype(np.complex128 if np.iscomplexobj(g) else np.float64),
            **{k: x for k, x in ref_hp.items() if k != "weight_decay"},
            weight_decay=wide(decay_of(name)),
            nesterov=kwargs.get("nesterov", False),
        )
        assert updates[name].dtype == g.dtype, name
        assert_close_scaled(updates[name], expected, RTOL[x64], f"updates[{name}]")
        assert_close_scaled(adam_state.mu[name], m, RTOL[x64], f"mu[{name}]")
        assert_close_scaled(adam_state.nu[name], v, RTOL[x64], f"nu[{name}]")
    # The edge leaves: ratio 1, so the zero-parameter leaf takes Adam's step
    # and the zero-gradient leaf moves only by its decay.
    assert np.all(np.abs(updates["zero_param"]) > 0)
    if decay_of("no_grad") == 0:
        np.testing.assert_array_equal(updates["no_grad"], 0)


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
@pytest.mark.parametrize("config", ["weight_decay", "nesterov-eps_root-mask-tree"])
def test_optimizer_matches_float64_reference(config: str, x64: bool) -> None:
    params, grads = _inputs(3 + len(config), x64)
    kwargs, hp, decay_of = _setup(config, params)
    learning_rate = 0.05
    with jax.enable_x64(x64):
        updates, _, final = run_scan(
            lamb(learning_rate, **kwargs), params, grads, feed_back=True
        )
    wide = (lambda x: x) if x64 else as_float32
    ref_hp = reference_hyperparameters(hp, x64)
    for name, g in grads.items():
        dtype = np.complex128 if np.iscomplexobj(g) else np.float64
        expected, _, p = lamb_reference(
            params[name].astype(dtype),
            g.astype(dtype),
            **{k: x for k, x in ref_hp.items() if k != "weight_decay"},
            weight_decay=wide(decay_of(name)),
            nesterov=kwargs.get("nesterov", False),
            learning_rate=wide(learning_rate),
        )
        assert updates[name].dtype == g.dtype and final[name].dtype == g.dtype
        assert_close_scaled(
            updates[name], expected, PARAM_RTOL[x64], f"updates[{name}]"
        )
        assert_close_scaled(final[name], p, PARAM_RTOL[x64], f"params[{name}]")


# One step from fresh state, b1 = b2 = 0 so Adam's direction is g/(|g| + eps).
EDGE_CASES = {
    "both-norms-positive": ([3.0, 4.0], [1.0, -2.0], 0.0),
    "zero-params": ([0.0, 0.0], [1.0, -2.0], 0.1),
    "zero-gradient": ([3.0, 4.0], [0.0, 0.0], 0.0),
    "zero-gradient-with-decay": ([3.0, 4.0], [0.0, 0.0], 0.5),
    "both-zero": ([0.0, 0.0], [0.0, 0.0], 0.1),
}


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_trust_ratio_edge_cases(case: str) -> None:
    p_list, g_list, wd = EDGE_CASES[case]
    p, g = np.array(p_list), np.array(g_list)
    a = g / (np.abs(g) + 1e-6) + wd * p
    ratio = norm(p) / norm(a) if norm(p) > 0 and norm(a) > 0 else 1.0
    tx = scale_by_lamb(b1=0.0, b2=0.0, weight_decay=wd)
    params = jnp.asarray(p, jnp.float32)
    updates, _ = tx.update(jnp.asarray(g, jnp.float32), tx.init(params), params)
    np.testing.assert_allclose(updates, ratio * a, rtol=1e-6, atol=1e-7)
    assert np.all(np.isfinite(updates))


# ---------------------------------------------------------------------------
# Parity with optax.lamb, parameters fed back
# ---------------------------------------------------------------------------

MASK = {"w1": True, "b1": False, "w2": True, "gain": False}


HYPERPARAMETERS = {"b1": 0.8, "b2": 0.99, "eps": 1e-8, "eps_root": 1e-10}


def _cosine():
    return optax.cosine_decay_schedule(2e-2, 100, alpha=0.1)


OPTAX_CASES = {
    "defaults": (lambda: lamb(1e-2), lambda: optax.lamb(1e-2)),
    "weight_decay-mask": (
        lambda: lamb(1e-2, weight_decay=0.05, mask=MASK),
        lambda: optax.lamb(1e-2, weight_decay=0.05, mask=MASK),
    ),
    "hyperparameters-schedules": (
        lambda: lamb(_cosine(), **HYPERPARAMETERS, weight_decay=_cosine()),
        lambda: optax.lamb(_cosine(), **HYPERPARAMETERS, weight_decay=_cosine()),
    ),
    # optax.lamb has no Nesterov flag: the same chain, built from optax's pieces.
    "nesterov": (
        lambda: lamb(1e-2, weight_decay=0.01, nesterov=True),
        lambda: optax.chain(
            optax.scale_by_adam(eps=1e-6, nesterov=True),
            optax.add_decayed_weights(0.01),
            optax.scale_by_trust_ratio(),
            optax.scale_by_learning_rate(1e-2),
        ),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(OPTAX_CASES))
def test_matches_optax_every_step(case: str) -> None:
    make_adamx, make_optax = OPTAX_CASES[case]
    compare_trajectories(
        trajectories(make_adamx(), view=moment_view),
        trajectories(make_optax(), view=moment_view),
        5e-5,
    )
