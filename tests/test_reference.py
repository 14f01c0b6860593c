"""Every adamx transform and flag against the float64 NumPy references, step by step.

Each case runs ``STEPS`` jitted updates over a random pytree
(several shapes, a scalar, a complex leaf, nested dict/list/tuple, ``None``
leaves) whose gradients change scale by orders of magnitude from step to
step, and compares every step's update, the final moments, the final count
and (for the optimizers) the parameters with :mod:`reference`, leaf by leaf.

Two precisions:

* float32 params and gradients against the float64 reference, with the exact
  decimal hyperparameters: adamx carries each decay with its complement
  ``1 - beta`` formed before rounding (``numerics.Decay``), so even
  ``1 - 0.999`` is exact to float32 precision. What remains is float32
  rounding of the arithmetic.
* float64 params and gradients under ``jax.enable_x64``, to ~1e-12: this
  checks the algebra itself, with no room for a wrong term or exponent.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
from catalogue import count_state

import adamx

STEPS = 120


# ---------------------------------------------------------------------------
# Trees and gradients
# ---------------------------------------------------------------------------


def _build(leaf: Callable[[tuple[int, ...], bool], Any], with_complex: bool) -> Any:
    """The test pytree, with ``leaf(shape, is_complex)`` at every array position."""
    tree = {
        "dense": {"kernel": leaf((2, 3, 4), False), "bias": leaf((3,), False)},
        "layers": [(leaf((5, 1), False), None), {"scale": leaf((), False)}],
        "frozen": None,
    }
    if with_complex:
        tree["phase"] = leaf((2, 2), True)
    return tree


@dataclasses.dataclass(frozen=True)
class Precision:
    name: str
    real: type
    complex: type
    x64: bool
    # Per-step directions u_t (|u_t| is O(1): at most (1 - b1)/sqrt(1 - b2) or 1).
    u_rtol: float
    u_atol: float
    # Moments: relative to the EMA of |g| (mu) or to the value itself (nu).
    state_rtol: float
    # Parameters and parameter updates, absolute on O(1) parameters.
    param_atol: float

    def hp(self, x: float) -> float:
        """A hyperparameter for the reference: its exact decimal value."""
        return float(x)


# float32: each step rounds a handful of float32 operations (relative error
# 2**-24 = 6e-8 each) into m, v and u. The moving averages forget old errors
# geometrically, so the error of m_t and v_t stays at a few ulps of the EMA
# of |g| and of v_t; u_t = m_hat/sqrt(v_hat) inherits that as a relative
# error of a few 1e-7. rtol=1e-5 leaves a 10-50x margin for that, and
# atol=1e-6 covers steps where m_t nearly cancels (then the error is a few
# ulps of EMA(|g|)/sqrt(v_hat) <= O(1) while u_t itself is ~0). A wrong
# term, exponent or constant moves u_t by >= 1e-3 and is far outside both.
# The parameters are O(1) and pick up one float32 rounding (<= 2.4e-7)
# per step, so after 120 steps they are within 120 * 2.4e-7 = 2.9e-5.
FLOAT32 = Precision("float32", np.float32, np.complex64, False, 1e-5, 1e-6, 1e-5, 3e-5)
# float64: the same argument with 2**-53 = 1.1e-16 gives errors near 1e-14;
# 1e-12 is tight enough that only exact algebra passes.
FLOAT64 = Precision(
    "float64", np.float64, np.complex128, True, 1e-12, 1e-12, 1e-12, 1e-12
)
PRECISIONS = [pytest.param(FLOAT32, id="float32"), pytest.param(FLOAT64, id="float64")]


def _inputs(precision: Precision, *case: Any):
    """(params, stacked gradients with a leading step axis) as NumPy trees.

    The random stream is seeded from the case, so every case sees its own data.
    """
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    # Every step has its own scale between 1e-3 and 1e3 (shared by all leaves),
    # and every leaf a fixed scale between 1e-1 and 1e1 on top.
    step_scale = 10.0 ** rng.uniform(-3.0, 3.0, size=STEPS)

    def param(shape, is_complex):
        x = rng.normal(size=shape)
        if is_complex:
            return (x + 1j * rng.normal(size=shape)).astype(precision.complex)
        return x.astype(precision.real)

    def grad(shape, is_complex):
        scale = step_scale.reshape((STEPS,) + (1,) * len(shape)) * 10.0 ** rng.uniform(
            -1, 1
        )
        x = rng.normal(size=(STEPS, *shape))
        if is_complex:
            x = x + 1j * rng.normal(size=(STEPS, *shape))
            return (scale * x).astype(precision.complex)
        return (scale * x).astype(precision.real)

    return _build(param, True), _build(grad, True)


def _run(tx: optax.GradientTransformation, params, grads):
    """Applies ``tx`` for every step of ``grads``; returns (params, state, updates).

    The update is jitted; the parameters are advanced in NumPy exactly as
    ``optax.apply_updates`` does (``p + u`` in the parameter dtype). The
    updates come back stacked along a leading step axis.
    """
    update = jax.jit(tx.update)
    state = tx.init(params)
    steps = []
    for t in range(jax.tree.leaves(grads)[0].shape[0]):
        grads_t = jax.tree.map(lambda x, t=t: x[t], grads)
        updates, state = update(grads_t, state, params)
        updates = jax.device_get(updates)
        params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)
        steps.append(updates)
    return params, state, jax.tree.map(lambda *xs: np.stack(xs), *steps)


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _per_step(stacked: np.ndarray) -> list[np.ndarray]:
    return [stacked[t] for t in range(stacked.shape[0])]


def _ema_abs(grads: list[np.ndarray], decay: float) -> np.ndarray:
    """EMA of |g| (the scale against which m's rounding error is measured)."""
    acc = np.zeros(grads[0].shape)
    for g in grads:
        acc = decay * acc + (1.0 - decay) * np.abs(g)
    return acc


def _close(actual, expected, rtol, atol, what):
    actual = np.asarray(actual)
    assert actual.shape == np.shape(expected), what
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def _check_mu(actual, expected, grads, b1, precision, what):
    # m_T's rounding error is a few ulps of the EMA of |g|, not of |m_T|,
    # which can be far smaller after cancellation.
    bound = precision.state_rtol * _ema_abs(grads, b1) + precision.state_rtol * np.abs(
        expected
    )
    err = np.abs(np.asarray(actual) - expected)
    assert np.all(err <= bound), f"{what}: max excess {np.max(err - bound)}"


def _check_structure(updates_stacked, grads):
    assert jax.tree.structure(updates_stacked) == jax.tree.structure(grads)


# ---------------------------------------------------------------------------
# Direction transforms: scale_by_adam, scale_by_amsgrad
# ---------------------------------------------------------------------------

HYPERS = {
    "default": dict(b1=0.9, b2=0.999, eps=1e-8),
    # No momentum, fast second moment, eps large enough to matter for the
    # smallest gradients: exercises b1 = 0 and eps on the hot path.
    "b1=0": dict(b1=0.0, b2=0.95, eps=1e-3),
}

# Every flag combination with eps_root in {0, 1e-6} at the default betas, and
# each flag once more with b1 = 0.
_VARIANTS = ((0.0, "default"), (1e-6, "default"), (0.0, "b1=0"))
DIRECTION_CASES = [
    pytest.param(
        "adam",
        dict(nesterov=nesterov, eps_root=eps_root),
        hp,
        id=f"adam-nesterov={nesterov}-eps_root={eps_root}-{hp}",
    )
    for nesterov in (False, True)
    for eps_root, hp in _VARIANTS
] + [
    pytest.param(
        "amsgrad",
        dict(bias_correction=bc, eps_root=eps_root),
        hp,
        id=f"amsgrad-bias_correction={bc}-eps_root={eps_root}-{hp}",
    )
    for bc in (True, False)
    for eps_root, hp in _VARIANTS
]


def _direction(kind: str, flags: dict, hypers: dict, precision: Precision):
    """(the adamx transform, the reference applied to one leaf's gradients)."""
    b1, b2, eps = hypers["b1"], hypers["b2"], hypers["eps"]
    eps_root = flags["eps_root"]
    hp = precision.hp
    if kind == "adam":
        tx = adamx.scale_by_adam(b1, b2, eps, eps_root, nesterov=flags["nesterov"])

        def ref(gs):
            return reference.adam(
                gs, hp(b1), hp(b2), hp(eps), hp(eps_root), nesterov=flags["nesterov"]
            )

    else:
        tx = adamx.scale_by_amsgrad(
            b1,
            b2,
            eps,
            eps_root,
            bias_correction_mu=flags["bias_correction"],
            bias_correction_nu=flags["bias_correction"],
        )

        def ref(gs):
            return reference.amsgrad(
                gs, hp(b1), hp(b2), hp(eps), hp(eps_root), flags["bias_correction"]
            )

    return tx, ref


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(("kind", "flags", "hypers"), DIRECTION_CASES)
def test_direction_matches_reference(kind, flags, hypers, precision):
    with jax.enable_x64(precision.x64):
        params, grads = _inputs(precision, kind, flags, hypers)
        hypers = HYPERS[hypers]
        tx, ref = _direction(kind, flags, hypers, precision)
        _, state, updates = _run(tx, params, grads)

        _check_structure(updates, grads)
        assert state.count.dtype == jnp.int32
        assert int(state.count) == STEPS
        for idx, (g, u) in enumerate(
            zip(_leaves(grads), _leaves(updates), strict=True)
        ):
            assert u.dtype == g.dtype, (
                f"leaf {idx}: update dtype {u.dtype} != {g.dtype}"
            )
            gs = [reference.as_wide(x) for x in _per_step(g)]
            expected, moments = ref(gs)
            _close(
                u,
                np.stack(expected),
                precision.u_rtol,
                precision.u_atol,
                f"u leaf {idx}",
            )
            mu = _leaves(state.mu)[idx]
            nu = _leaves(state.nu)[idx]
            assert mu.dtype == g.dtype and nu.dtype == np.zeros((), g.dtype).real.dtype
            _check_mu(
                mu,
                moments.mu,
                gs,
                precision.hp(hypers["b1"]),
                precision,
                f"mu leaf {idx}",
            )
            _close(nu, moments.nu, precision.state_rtol, 0.0, f"nu leaf {idx}")
            if kind == "amsgrad":
                nu_max = _leaves(state.nu_max)[idx]
                _close(
                    nu_max,
                    moments.nu_max,
                    precision.state_rtol,
                    0.0,
                    f"nu_max leaf {idx}",
                )


# ---------------------------------------------------------------------------
# bias_correction transform
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.999, 0.9999])
def test_bias_correction_matches_reference(decay, precision):
    with jax.enable_x64(precision.x64):
        params, grads = _inputs(precision, "bias_correction", decay)
        _, state, updates = _run(adamx.bias_correction(decay), params, grads)

        _check_structure(updates, grads)
        assert state.count.dtype == jnp.int32
        assert int(state.count) == STEPS
        for idx, (g, u) in enumerate(
            zip(_leaves(grads), _leaves(updates), strict=True)
        ):
            assert u.dtype == g.dtype
            expected, count = reference.bias_correction(
                _per_step(g), precision.hp(decay)
            )
            assert count == STEPS
            # One division by 1 - decay**t, which adamx computes to relative
            # error < 1e-6 in float32 (see test_seeds.py): no cancellation
            # anywhere, so a purely relative tolerance applies. In float64 the
            # reference's own 1 - decay**t is good to ~1e-16/(1 - decay) = 1e-12.
            rtol = 1e-6 if not precision.x64 else 1e-12
            _close(u, np.stack(expected), rtol, 0.0, f"leaf {idx}")


# ---------------------------------------------------------------------------
# Optimizers: adam, adamw (with masks), nadam, nadamw, amsgrad
# ---------------------------------------------------------------------------

LEARNING_RATE = 0.05


def _mask_rule(rule: str | None):
    """Which leaves get weight decay, as a predicate on an array."""
    if rule is None:
        return lambda x: True
    if rule == "ndim>=2":
        return lambda x: np.ndim(x) >= 2
    if rule == "ndim<2":
        return lambda x: np.ndim(x) < 2
    raise AssertionError(rule)


# (alias, keyword arguments, weight-decay mask: None, "callable" or "tree")
ALIAS_CASES = [
    pytest.param("adam", {}, None, id="adam"),
    pytest.param("adam", dict(nesterov=True, eps_root=1e-6), None, id="adam-nesterov"),
    pytest.param("adamw", {}, None, id="adamw-default_decay"),
    pytest.param("adamw", dict(weight_decay=0.1), None, id="adamw"),
    pytest.param("adamw", dict(weight_decay=0.1), "callable", id="adamw-mask_fn"),
    pytest.param("adamw", dict(weight_decay=0.1), "tree", id="adamw-mask_tree"),
    pytest.param("nadam", dict(eps_root=1e-6), None, id="nadam"),
    pytest.param("nadamw", dict(weight_decay=0.1), "callable", id="nadamw-mask_fn"),
    pytest.param("amsgrad", {}, None, id="amsgrad"),
    pytest.param(
        "amsgrad",
        dict(bias_correction_mu=False, bias_correction_nu=False),
        None,
        id="amsgrad-reddi",
    ),
]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(("name", "kwargs", "mask"), ALIAS_CASES)
def test_optimizer_matches_reference(name, kwargs, mask, precision):
    with jax.enable_x64(precision.x64):
        params, grads = _inputs(precision, name, kwargs, mask)
        hp = precision.hp
        kwargs = dict(kwargs)
        decays = name in ("adamw", "nadamw")
        weight_decay = kwargs.get("weight_decay", 1e-4) if decays else 0.0
        # The callable decays matrices; the explicit tree decays the others,
        # so between them every leaf is decayed in one case and kept in another.
        rule = {None: None, "callable": "ndim>=2", "tree": "ndim<2"}[mask]
        decayed = _mask_rule(rule)
        if mask == "callable":
            kwargs["mask"] = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
        elif mask == "tree":
            kwargs["mask"] = jax.tree.map(decayed, params)
        tx = getattr(adamx, name)(LEARNING_RATE, **kwargs)

        new_params, state, updates = _run(tx, params, grads)

        _check_structure(updates, grads)
        assert jax.tree.structure(new_params) == jax.tree.structure(params)
        moments = count_state(state)
        assert moments.count.dtype == jnp.int32
        assert int(moments.count) == STEPS
        flat = zip(
            _leaves(params),
            _leaves(grads),
            _leaves(updates),
            _leaves(new_params),
            strict=True,
        )
        for idx, (p0, g, u, p) in enumerate(flat):
            assert u.dtype == g.dtype and p.dtype == p0.dtype
            gs = [reference.as_wide(x) for x in _per_step(g)]
            expected = reference.optimizer(
                name,
                p0,
                gs,
                hp(LEARNING_RATE),
                eps_root=hp(kwargs.get("eps_root", 0.0)),
                b1=hp(0.9),
                b2=hp(0.999),
                eps=hp(1e-8),
                weight_decay=hp(weight_decay) if decayed(p0) else 0.0,
                nesterov=kwargs.get("nesterov", False),
                bias_correction=kwargs.get("bias_correction_nu", True),
            )
            # Per-step updates -lr*(u_t + wd*theta): lr times the direction's
            # tolerance, plus lr*wd times the parameters' drift.
            _close(
                u,
                np.stack(expected.updates),
                precision.u_rtol,
                LEARNING_RATE
                * (precision.u_atol + weight_decay * precision.param_atol),
                f"update leaf {idx}",
            )
            _close(
                p, expected.params[-1], 0.0, precision.param_atol, f"param leaf {idx}"
            )
            mu = _leaves(moments.mu)[idx]
            nu = _leaves(moments.nu)[idx]
            _check_mu(mu, expected.state.mu, gs, hp(0.9), precision, f"mu leaf {idx}")
            _close(nu, expected.state.nu, precision.state_rtol, 0.0, f"nu leaf {idx}")
            if name == "amsgrad":
                nu_max = _leaves(moments.nu_max)[idx]
                _close(
                    nu_max,
                    expected.state.nu_max,
                    precision.state_rtol,
                    0.0,
                    f"nu_max {idx}",
                )


# ---------------------------------------------------------------------------
# bfloat16 moment storage
# ---------------------------------------------------------------------------

BF16_STEPS = 32
# bfloat16 keeps 8 significant bits, so storing a value rounds it by at most
# delta = 2**-9 relatively.
#  * v_t's recurrence has positive terms only, so T roundings keep it within a
#    factor (1 +- delta)**T: 32 * 2**-9 = 6.3% at T = 32 (b2 = 0.999 forgets
#    almost nothing in 32 steps), i.e. <= 3.2% on sqrt(v_hat).
#  * m_t's rounding errors decay like b1**k: |error| <= delta/(1 - b1) = 2%
#    of the largest EMA of |g| (|m| never exceeds it).
# The direction is therefore within ~5% of |u| plus 2% of EMA(|g|)/sqrt(v_hat)
# (<= ~1 here); rtol = atol = 0.06 holds that with a little margin, and still
# rejects a moment that stopped moving (e.g. b2 rounded to bfloat16's 1.0).
BF16_DELTA = 2.0**-9
BF16_RTOL = BF16_ATOL = 0.06

BF16_CASES = [
    pytest.param("adam", dict(nesterov=False), id="adam"),
    pytest.param("adam", dict(nesterov=True), id="adam-nesterov"),
    pytest.param("amsgrad", {}, id="amsgrad"),
    pytest.param(
        "amsgrad",
        dict(bias_correction_mu=False, bias_correction_nu=False),
        id="amsgrad-no_bias_correction",
    ),
]


@pytest.mark.parametrize(("kind", "flags"), BF16_CASES)
def test_bfloat16_storage_stays_close_to_reference(kind, flags):
    rng = np.random.default_rng(5)
    params = _build(lambda shape, _: rng.normal(size=shape).astype(np.float32), False)
    grads = _build(
        lambda shape, _: (
            rng.normal(size=(BF16_STEPS, *shape)) * 10.0 ** rng.uniform(-2, 2)
        ).astype(np.float32),
        False,
    )
    storage = dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    if kind == "adam":
        tx = adamx.scale_by_adam(**storage, **flags)
        ref = lambda gs: reference.adam(gs, nesterov=flags["nesterov"])  # noqa: E731
    else:
        tx = adamx.scale_by_amsgrad(**storage, **flags)
        debiased = flags.get("bias_correction_nu", True)
        ref = lambda gs: reference.amsgrad(gs, bias_correction=debiased)  # noqa: E731

    _, state, updates = _run(tx, params, grads)

    assert int(state.count) == BF16_STEPS
    names = ("mu", "nu", "nu_max") if kind == "amsgrad" else ("mu", "nu")
    for name in names:
        for leaf in _leaves(getattr(state, name)):
            assert leaf.dtype == jnp.bfloat16, f"{name} stored as {leaf.dtype}"
    for idx, (g, u) in enumerate(zip(_leaves(grads), _leaves(updates), strict=True)):
        assert u.dtype == np.float32
        gs = [reference.as_wide(x) for x in _per_step(g)]
        expected, moments = ref(gs)
        _close(u, np.stack(expected), BF16_RTOL, BF16_ATOL, f"u leaf {idx}")
        mu = np.asarray(_leaves(state.mu)[idx], np.float64)
        nu = np.asarray(_leaves(state.nu)[idx], np.float64)
        # The final stored m: step k's rounding (<= delta * EMA_k(|g|), since
        # |m_k| <= EMA_k(|g|)) reaches step T damped by b1**(T - k).
        mu_bound = np.zeros(g.shape[1:])
        ema = np.zeros(g.shape[1:])
        for x in gs:
            ema = 0.9 * ema + 0.1 * np.abs(x)
            mu_bound = 0.9 * mu_bound + BF16_DELTA * ema
        assert np.all(np.abs(mu - moments.mu) <= 1.05 * mu_bound), f"mu leaf {idx}"
        # The final stored v: T roundings, all relative, of a positive sum.
        nu_rtol = (1 + BF16_DELTA) ** BF16_STEPS - 1
        _close(nu, moments.nu, 1.05 * nu_rtol, 0.0, f"nu leaf {idx}")


@pytest.mark.parametrize("b2", [0.999, 0.9999])
def test_long_run_second_moment_is_unbiased(b2):
    # In float32, round(b2) + round(1 - b2) != 1 (they miss by 1.7e-4 at
    # 0.9999); an average formed as b*m + (1-b)*x would then settle at that
    # factor times the true average. 30k steps reach the steady state.
    grads = np.random.default_rng(0).normal(size=(30_000, 64)).astype(np.float32)
    tx = adamx.scale_by_adam(b2=b2)
    params = jnp.zeros(64)

    def step(state, g):
        return tx.update(g, state, params)[1], None

    nu = np.asarray(jax.jit(lambda: jax.lax.scan(step, tx.init(params), grads)[0].nu)())
    expected = np.zeros(64)
    for g in grads.astype(np.float64):
        expected = b2 * expected + (1 - b2) * g * g
    assert abs(float(np.mean(nu / expected)) - 1) < 1e-6
