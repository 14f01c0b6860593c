"""Hyperparameters of adamx transforms may be Python numbers, JAX arrays or tracers.

Expected values come from a float64 NumPy implementation of the Adam family
written out below (:func:`_reference`), from hand-derived formulas, or from
float64 finite differences of that reference — never from adamx itself,
except where a test states that two ways of passing the same hyperparameter
must give the same adamx numbers.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx

# ---------------------------------------------------------------------------
# Float64 reference
# ---------------------------------------------------------------------------

Hyper = float | Sequence[float]


def _at(value: Hyper, t: int) -> float:
    """The hyperparameter in force at 1-based step ``t`` (constant or per step)."""
    return value if np.isscalar(value) else value[t - 1]


def _reference(
    grad_fn: Callable[[np.ndarray, int], np.ndarray],
    param0: np.ndarray,
    steps: int,
    *,
    kind: str = "adam",
    lr: Hyper = 0.1,
    b1: Hyper = 0.9,
    b2: Hyper = 0.999,
    eps: Hyper = 1e-8,
    eps_root: Hyper = 0.0,
    weight_decay: Hyper = 0.0,
    nesterov: bool = False,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Float64 updates of one leaf and its final value.

    ``grad_fn(param, t)`` gives the gradient at step ``t``. Each
    hyperparameter is a constant or a per-step sequence; as in adamx, the
    bias correction at step ``t`` uses the decay in force at step ``t``.
    ``kind`` is ``"adam"``, ``"amsgrad"`` (maximum of the debiased second
    moment), ``"amsgrad-raw"`` (Reddi et al., no debiasing) or ``"bias"``
    (the gradient divided by ``1 - b1**t``). The update is ``-lr * (direction
    + weight_decay * param)``; ``lr=-1`` gives a bare direction.
    """
    param = np.asarray(param0, np.float64)
    m = np.zeros_like(param)
    v = np.zeros_like(param)
    v_max = np.zeros_like(param)
    updates = []
    for t in range(1, steps + 1):
        g = np.asarray(grad_fn(param, t), np.float64)
        beta1, beta2 = _at(b1, t), _at(b2, t)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        if kind == "bias":
            direction = g / (1 - beta1**t)
        elif kind == "amsgrad-raw":
            v_max = np.maximum(v_max, v)
            direction = m / (np.sqrt(v_max + _at(eps_root, t)) + _at(eps, t))
        else:
            m_hat = m / (1 - beta1**t)
            if nesterov:
                m_hat = beta1 * m / (1 - beta1 ** (t + 1)) + (1 - beta1) * g / (
                    1 - beta1**t
                )
            v_hat = v / (1 - beta2**t)
            if kind == "amsgrad":
                v_max = np.maximum(v_max, v_hat)
                v_hat = v_max
            direction = m_hat / (np.sqrt(v_hat + _at(eps_root, t)) + _at(eps, t))
        update = -_at(lr, t) * (direction + _at(weight_decay, t) * param)
        param = param + update
        updates.append(update)
    return updates, param


def _stream(steps: int, seed: int) -> list[dict[str, jax.Array]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(2,)), jnp.float32),
        }
        for _ in range(steps)
    ]


def _params() -> dict[str, jax.Array]:
    rng = np.random.default_rng(99)
    return {
        "w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(2,)), jnp.float32),
    }


def _run(update, state, params, grads):
    """Stacked updates and final state of ``update`` fed ``grads``; params follow."""
    updates = []
    for g in grads:
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
        updates.append(u)
    return jax.tree.map(lambda *steps: np.stack(steps), *updates), state


def _assert_reference(updates, grads, ref: dict[str, Any]) -> None:
    for name in _params():
        seq = [np.asarray(g[name], np.float64) for g in grads]
        expected, _ = _reference(
            lambda p, t, seq=seq: seq[t - 1], _params()[name], len(grads), **ref
        )
        np.testing.assert_allclose(
            updates[name], np.stack(expected), rtol=2e-5, atol=1e-6
        )


def _assert_ulps(actual, expected, ulps: int) -> None:
    """Within ``ulps`` float32 units in the last place of each leaf's largest value."""
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        atol = (
            ulps
            * float(jnp.finfo(jnp.float32).eps)
            * float(np.max(np.abs(e), initial=0))
        )
        np.testing.assert_allclose(a, e, rtol=0, atol=atol)


# ---------------------------------------------------------------------------
# optax.inject_hyperparams
# ---------------------------------------------------------------------------

# name: (factory, injected kwargs, (hyperparameter to change, new value),
#        reference kwargs)
INJECT = {
    "adam": (adamx.adam, {"learning_rate": 0.1}, ("learning_rate", 0.03), {}),
    "adamw": (
        adamx.adamw,
        {"learning_rate": 0.1, "b1": 0.8, "weight_decay": 0.05},
        ("weight_decay", 0.5),
        {},
    ),
    "amsgrad": (
        adamx.amsgrad,
        {"learning_rate": 0.05, "b2": 0.99},
        ("b2", 0.9),
        {"kind": "amsgrad"},
    ),
    "nadam": (
        adamx.nadam,
        {"learning_rate": 0.1, "eps": 1e-3},
        ("eps", 0.5),
        {"nesterov": True},
    ),
    "scale_by_adam": (
        adamx.scale_by_adam,
        {"b1": 0.9, "b2": 0.99, "eps": 1e-6},
        ("b1", 0.5),
        {"lr": -1.0},
    ),
}

_REF_NAMES = {
    "learning_rate": "lr",
    "weight_decay": "weight_decay",
    "b1": "b1",
    "b2": "b2",
    "eps": "eps",
}


def _ref_kwargs(kwargs: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {**{_REF_NAMES[k]: v for k, v in kwargs.items()}, **extra}


@functools.cache
def _injected(name: str):
    """The injected optimizer, its jitted update and that update's trace log."""
    factory, kwargs, _, _ = INJECT[name]
    tx = optax.inject_hyperparams(factory)(**kwargs)
    traces: list[None] = []

    def update(g, state, params):
        traces.append(None)
        return tx.update(g, state, params)

    return tx, jax.jit(update), traces


def _float32_values(factory: Callable[..., Any], kwargs: dict[str, Any]):
    """Every numeric argument of ``factory(**kwargs)`` as a float32-rounded float.

    Defaults are included: ``optax.inject_hyperparams`` passes each numeric
    argument, defaults too, as a float32 array, traced inside the jitted
    update. An injected ``b2=0.999`` therefore means the float32 value
    0.99900001, and adamx forms ``1 - b2`` from that value (9.99987e-4),
    whereas for the Python float 0.999 it forms ``1 - b2`` in float64 (0.001).
    The plain optimizer that must agree with the injected one is the one given
    these rounded floats.
    """
    bound = inspect.signature(factory).bind(**kwargs)
    bound.apply_defaults()
    return {
        k: float(np.float32(v))
        for k, v in bound.arguments.items()
        if isinstance(v, float | int) and not isinstance(v, bool)
    }


@pytest.mark.parametrize("name", list(INJECT))
def test_inject_hyperparams_matches_plain_optimizer(name: str) -> None:
    factory, kwargs, _, extra = INJECT[name]
    tx, step, _ = _injected(name)
    rounded = _float32_values(factory, kwargs)
    plain = factory(**rounded)
    grads = _stream(4, seed=1)

    injected, state = _run(step, tx.init(_params()), _params(), grads)
    expected, _ = _run(jax.jit(plain.update), plain.init(_params()), _params(), grads)
    assert set(state.hyperparams) == set(rounded)
    _assert_ulps(injected, expected, ulps=2)
    _assert_reference(injected, grads, _ref_kwargs(kwargs, extra))


@pytest.mark.parametrize("name", list(INJECT))
def test_changing_injected_hyperparam_changes_update_without_retrace(name: str) -> None:
    _, kwargs, (key, new), extra = INJECT[name]
    tx, step, traces = _injected(name)
    grads = _stream(6, seed=2)
    switch = 3

    state = tx.init(_params())
    params = _params()
    updates = []
    for i, g in enumerate(grads):
        if i == switch:
            old = state.hyperparams[key]
            hyperparams = {**state.hyperparams, key: jnp.asarray(new, old.dtype)}
            state = state._replace(hyperparams=hyperparams)
        u, state = step(g, state, params)
        params = optax.apply_updates(params, u)
        updates.append(u)
    updates = jax.tree.map(lambda *steps: np.stack(steps), *updates)

    ref = _ref_kwargs(kwargs, extra)
    schedule = [ref[_REF_NAMES[key]]] * switch + [new] * (len(grads) - switch)
    _assert_reference(updates, grads, {**ref, _REF_NAMES[key]: schedule})
    # The change is visible: the steps after it differ from an unchanged run.
    unchanged = {}
    for leaf in _params():
        seq = [np.asarray(g[leaf], np.float64) for g in grads]
        unchanged[leaf], _ = _reference(
            lambda p, t, seq=seq: seq[t - 1], _params()[leaf], len(grads), **ref
        )
        assert not np.allclose(
            updates[leaf][switch], unchanged[leaf][switch], rtol=1e-3
        )
    # The new value is an array of the same dtype, so the step was traced once
    # for every call so far, in this test and any other using this optimizer.
    assert len(traces) == 1


# ---------------------------------------------------------------------------
# Arrays and tracers as hyperparameters
# ---------------------------------------------------------------------------

HYPER = {"lr": 0.05, "b1": 0.8, "b2": 0.95, "eps": 1e-4, "eps_root": 1e-6, "wd": 0.1}

# name: (factory of a hyperparameter dict, reference kwargs beyond the hyperparameters)
ARRAY_CASES: dict[str, tuple[Callable[[dict[str, Any]], Any], dict[str, Any]]] = {
    "scale_by_adam": (
        lambda h: adamx.scale_by_adam(h["b1"], h["b2"], h["eps"], h["eps_root"]),
        {"lr": -1.0, "weight_decay": 0.0},
    ),
    "scale_by_adam-nesterov": (
        lambda h: adamx.scale_by_adam(
            h["b1"], h["b2"], h["eps"], h["eps_root"], nesterov=True
        ),
        {"lr": -1.0, "weight_decay": 0.0, "nesterov": True},
    ),
    "scale_by_amsgrad": (
        lambda h: adamx.scale_by_amsgrad(h["b1"], h["b2"], h["eps"], h["eps_root"]),
        {"lr": -1.0, "weight_decay": 0.0, "kind": "amsgrad"},
    ),
    "scale_by_amsgrad-reddi": (
        lambda h: adamx.scale_by_amsgrad(
            h["b1"], h["b2"], h["eps"], h["eps_root"], None, False, False
        ),
        {"lr": -1.0, "weight_decay": 0.0, "kind": "amsgrad-raw"},
    ),
    "bias_correction": (
        lambda h: adamx.bias_correction(h["b1"]),
        {"lr": -1.0, "weight_decay": 0.0, "kind": "bias"},
    ),
    "adam": (
        lambda h: adamx.adam(h["lr"], h["b1"], h["b2"], h["eps"], h["eps_root"]),
        {"weight_decay": 0.0},
    ),
    "adamw": (
        lambda h: adamx.adamw(
            h["lr"], h["b1"], h["b2"], h["eps"], h["eps_root"], weight_decay=h["wd"]
        ),
        {},
    ),
    "nadam": (
        lambda h: adamx.nadam(h["lr"], h["b1"], h["b2"], h["eps"], h["eps_root"]),
        {"weight_decay": 0.0, "nesterov": True},
    ),
    "nadamw": (
        lambda h: adamx.nadamw(
            h["lr"], h["b1"], h["b2"], h["eps"], h["eps_root"], weight_decay=h["wd"]
        ),
        {"nesterov": True},
    ),
    "amsgrad": (
        lambda h: adamx.amsgrad(h["lr"], h["b1"], h["b2"], h["eps"], h["eps_root"]),
        {"weight_decay": 0.0, "kind": "amsgrad"},
    ),
}


def _ref_for(name: str) -> dict[str, Any]:
    h = HYPER
    base = {
        "lr": h["lr"],
        "b1": h["b1"],
        "b2": h["b2"],
        "eps": h["eps"],
        "eps_root": h["eps_root"],
        "weight_decay": h["wd"],
    }
    return {**base, **ARRAY_CASES[name][1]}


@pytest.mark.parametrize("name", list(ARRAY_CASES))
def test_array_hyperparams_equal_python_floats(name: str) -> None:
    make, _ = ARRAY_CASES[name]
    as_arrays = {k: jnp.asarray(v, jnp.float32) for k, v in HYPER.items()}
    # A float32 array means its float32 value: jnp.float32(0.95) is
    # 0.94999999, and adamx forms 1 - b2 from that value. The Python floats
    # that mean the same are those float32 values, not the decimals (for
    # which adamx forms 1 - b in float64, a different float32 complement).
    rounded = {k: float(np.float32(v)) for k, v in HYPER.items()}
    grads = _stream(4, seed=3)
    results = []
    for h in (HYPER, rounded, as_arrays):
        tx = make(h)
        results.append(_run(tx.update, tx.init(_params()), _params(), grads))
    (from_decimals, _), (from_floats, state_f), (from_arrays, state_a) = results
    for a, f in zip(
        jax.tree.leaves((from_arrays, state_a)),
        jax.tree.leaves((from_floats, state_f)),
        strict=True,
    ):
        assert np.asarray(a).dtype == np.asarray(f).dtype
        np.testing.assert_array_equal(a, f)
    _assert_reference(from_decimals, grads, _ref_for(name))
    _assert_reference(from_arrays, grads, _ref_for(name))


@pytest.mark.parametrize("name", list(ARRAY_CASES))
def test_traced_hyperparams_in_jitted_factory(name: str) -> None:
    make, _ = ARRAY_CASES[name]
    grads = _stream(3, seed=4)

    def _run_traced(tx, params, grads):
        state = tx.init(params)
        updates = []
        for g in grads:
            u, state = tx.update(g, state, params)
            params = optax.apply_updates(params, u)
            updates.append(u)
        return jax.tree.map(lambda *steps: jnp.stack(steps), *updates), state

    @jax.jit
    def train(h, grads, params):
        # Built inside jit: every hyperparameter is a tracer here.
        assert all(isinstance(v, jax.core.Tracer) for v in h.values())
        tx = make(h)
        return _run_traced(tx, params, grads)

    h = {k: jnp.asarray(v, jnp.float32) for k, v in HYPER.items()}
    traced = train(h, grads, _params())
    # The traced values are float32, and for a tracer adamx forms 1 - b in
    # float32 from that value: the eager run that means the same is given the
    # Python floats of those float32 values (as in the test above).
    tx = make({k: float(np.float32(v)) for k, v in HYPER.items()})
    eager = _run(tx.update, tx.init(_params()), _params(), grads)
    # jit fuses float32 arithmetic differently from eager execution.
    _assert_ulps(traced, eager, ulps=2)
    _assert_reference(traced[0], grads, _ref_for(name))


# ---------------------------------------------------------------------------
# Differentiating through an update (meta-learning)
# ---------------------------------------------------------------------------

_RNG = np.random.default_rng(5)
A = _RNG.normal(size=(6, 3))
Y = _RNG.normal(size=(6,))
# Start near the least-squares optimum, so that the first step overshoots in
# some coordinates and the second gradient disagrees with the first: only then
# does b1 (the weight of the old gradient) move the loss noticeably.
THETA0 = np.linalg.lstsq(A, Y, rcond=None)[0] + np.array([0.05, -0.02, 0.08])


def _loss_np(theta: np.ndarray) -> float:
    r = A @ theta - Y
    return 0.5 * float(r @ r) / len(Y)


def _grad_np(theta: np.ndarray, t: int) -> np.ndarray:
    del t
    return A.T @ (A @ theta - Y) / len(Y)


def _loss_jnp(theta: jax.Array) -> jax.Array:
    r = jnp.asarray(A, jnp.float32) @ theta - jnp.asarray(Y, jnp.float32)
    return 0.5 * jnp.dot(r, r) / len(Y)


# name: (factory of (lr, b1), reference kwargs)
META = {
    "adam": (lambda lr, b1: adamx.adam(lr, b1), {}),
    "adamw": (
        lambda lr, b1: adamx.adamw(lr, b1, weight_decay=0.1),
        {"weight_decay": 0.1},
    ),
    "nadam": (lambda lr, b1: adamx.nadam(lr, b1), {"nesterov": True}),
    "nadamw": (
        lambda lr, b1: adamx.nadamw(lr, b1, weight_decay=0.1),
        {"nesterov": True, "weight_decay": 0.1},
    ),
    "amsgrad": (lambda lr, b1: adamx.amsgrad(lr, b1), {"kind": "amsgrad"}),
    "amsgrad-reddi": (
        lambda lr, b1: adamx.amsgrad(
            lr, b1, bias_correction_mu=False, bias_correction_nu=False
        ),
        {"kind": "amsgrad-raw"},
    ),
}


def _loss_after(make, lr, b1, steps: int) -> jax.Array:
    """The loss after ``steps`` updates, gradients taken at the current point."""
    tx = make(lr, b1)
    theta = jnp.asarray(THETA0, jnp.float32)
    state = tx.init(theta)
    for _ in range(steps):
        u, state = tx.update(jax.grad(_loss_jnp)(theta), state, theta)
        theta = optax.apply_updates(theta, u)
    return _loss_jnp(theta)


def _loss_after_np(ref: dict[str, Any], lr: float, b1: float, steps: int) -> float:
    _, theta = _reference(_grad_np, THETA0, steps, lr=lr, b1=b1, **ref)
    return _loss_np(theta)


def _central_difference(
    f: Callable[[float], float], x: float, h: float = 1e-6
) -> float:
    return (f(x + h) - f(x - h)) / (2 * h)


LR, B1 = 0.1, 0.9


@pytest.mark.parametrize("name", list(META))
def test_grad_wrt_learning_rate_after_one_update(name: str) -> None:
    make, ref = META[name]
    grad = jax.grad(lambda lr: _loss_after(make, lr, B1, 1))(jnp.float32(LR))
    expected = _central_difference(lambda lr: _loss_after_np(ref, lr, B1, 1), LR)
    assert np.isfinite(grad)
    assert abs(expected) > 1e-2
    np.testing.assert_allclose(grad, expected, rtol=1e-4)


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("name", list(META))
def test_grad_wrt_b1(name: str, steps: int) -> None:
    # After one update the debiased first moment is the gradient itself, so
    # only Nesterov's look-ahead depends on b1 there; after two it always does.
    make, ref = META[name]
    grad = jax.grad(lambda b1: _loss_after(make, LR, b1, steps))(jnp.float32(B1))
    expected = _central_difference(lambda b1: _loss_after_np(ref, LR, b1, steps), B1)
    assert np.isfinite(grad)
    # The loss moves by about LR per unit of b1; float32 resolves 1e-5 of that.
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5 * LR)
    if steps == 2 or ref.get("nesterov"):
        assert abs(expected) > 1e-3


EPS_ROOT, EPS = 1e-8, 1e-8

# name: (transform, d(update)/dg at g = 0 on the first step, derived by hand).
# With m_1 = (1 - b1) g and v_1 = (1 - b2) g^2, the first update is
# c * g / (sqrt(c' g^2 + eps_root) + eps), whose slope at g = 0 is
# c / (sqrt(eps_root) + eps); c = 1 when m is debiased, (1 - b1) when not,
# and 1 + b1 / (1 + b1) for Nesterov's look-ahead at b1 = 0.9.
SLOPE = 1.0 / (np.sqrt(EPS_ROOT) + EPS)
G0_CASES = {
    "scale_by_adam": (lambda: adamx.scale_by_adam(eps=EPS, eps_root=EPS_ROOT), SLOPE),
    "scale_by_adam-nesterov": (
        lambda: adamx.scale_by_adam(eps=EPS, eps_root=EPS_ROOT, nesterov=True),
        (1 + 0.9 / 1.9) * SLOPE,
    ),
    "scale_by_amsgrad": (
        lambda: adamx.scale_by_amsgrad(eps=EPS, eps_root=EPS_ROOT),
        SLOPE,
    ),
    "scale_by_amsgrad-reddi": (
        lambda: adamx.scale_by_amsgrad(
            eps=EPS,
            eps_root=EPS_ROOT,
            bias_correction_mu=False,
            bias_correction_nu=False,
        ),
        0.1 * SLOPE,
    ),
    "adam": (lambda: adamx.adam(0.1, eps=EPS, eps_root=EPS_ROOT), -0.1 * SLOPE),
    "nadamw": (
        lambda: adamx.nadamw(0.1, eps=EPS, eps_root=EPS_ROOT, weight_decay=0.0),
        -0.1 * (1 + 0.9 / 1.9) * SLOPE,
    ),
    "amsgrad": (lambda: adamx.amsgrad(0.1, eps=EPS, eps_root=EPS_ROOT), -0.1 * SLOPE),
}


@pytest.mark.parametrize("name", list(G0_CASES))
def test_eps_root_makes_grad_wrt_gradient_finite_at_zero(name: str) -> None:
    make, slope = G0_CASES[name]
    tx = make()
    params = jnp.zeros(3, jnp.float32)
    state = tx.init(params)

    def total_update(g):
        u, _ = tx.update(g, state, params)
        return jnp.sum(u)

    grad = jax.grad(total_update)(jnp.zeros(3, jnp.float32))
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, np.full(3, slope), rtol=1e-5)
