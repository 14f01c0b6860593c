"""Numerical safety of every adamx transform, where optax is unsafe or lacks a knob.

Each test runs over the table ``CASES``: the four ``scale_by_*`` directions,
``bias_correction`` and the five named optimizers. Expected values come from
the float64 NumPy reference ``_reference`` below, from hand arithmetic, or
from optax (for the contrasts), never from adamx itself.

The optimizers are built with learning rate 1 and weight decay 0, so their
update is exactly minus the direction and the same reference serves them all.
``bias_correction`` is built with decay = b2, so the bfloat16 rounding hazard of
b2 = 0.999 applies to it too.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx

INT32_MAX = 2**31 - 1
B1, B2, EPS = 0.9, 0.999, 1e-8
BF16 = jnp.bfloat16
NARROW = {np.dtype(jnp.bfloat16), np.dtype(jnp.float16)}


@dataclasses.dataclass(frozen=True)
class Case:
    """One transform: how to build it and which reference it follows.

    kind: "adam", "nesterov", "amsgrad" (debiased), "amsgrad_raw" or "bias".
    alias: True for the named optimizers, whose state is optax.chain's tuple
      with the direction's state first.
    """

    name: str
    kind: str
    build: Callable[..., optax.GradientTransformation]
    alias: bool = False

    @property
    def moments(self) -> tuple[str, ...]:
        return {
            "bias": (),
            "amsgrad": ("mu", "nu", "nu_max"),
            "amsgrad_raw": ("mu", "nu", "nu_max"),
        }.get(self.kind, ("mu", "nu"))


def _direction_kwargs(kw):
    return {
        "b1": kw.get("b1", B1),
        "b2": kw.get("b2", B2),
        "eps": kw.get("eps", EPS),
        "mu_dtype": kw.get("mu_dtype"),
        "nu_dtype": kw.get("nu_dtype"),
    }


CASES = [
    Case(
        "scale_by_adam",
        "adam",
        lambda **kw: adamx.scale_by_adam(**_direction_kwargs(kw)),
    ),
    Case(
        "scale_by_adam_nesterov",
        "nesterov",
        lambda **kw: adamx.scale_by_adam(**_direction_kwargs(kw), nesterov=True),
    ),
    Case(
        "scale_by_amsgrad",
        "amsgrad",
        lambda **kw: adamx.scale_by_amsgrad(**_direction_kwargs(kw)),
    ),
    Case(
        "scale_by_amsgrad_raw",
        "amsgrad_raw",
        lambda **kw: adamx.scale_by_amsgrad(
            **_direction_kwargs(kw),
            bias_correction_mu=False,
            bias_correction_nu=False,
        ),
    ),
    Case(
        "bias_correction", "bias", lambda **kw: adamx.bias_correction(kw.get("b2", B2))
    ),
    Case(
        "adam",
        "adam",
        lambda lr=1.0, **kw: adamx.adam(lr, **_direction_kwargs(kw)),
        alias=True,
    ),
    Case(
        "adamw",
        "adam",
        lambda lr=1.0, wd=0.0, **kw: adamx.adamw(
            lr, weight_decay=wd, **_direction_kwargs(kw)
        ),
        alias=True,
    ),
    Case(
        "nadam",
        "nesterov",
        lambda lr=1.0, **kw: adamx.nadam(lr, **_direction_kwargs(kw)),
        alias=True,
    ),
    Case(
        "nadamw",
        "nesterov",
        lambda lr=1.0, wd=0.0, **kw: adamx.nadamw(
            lr, weight_decay=wd, **_direction_kwargs(kw)
        ),
        alias=True,
    ),
    Case(
        "amsgrad",
        "amsgrad",
        lambda lr=1.0, **kw: adamx.amsgrad(lr, **_direction_kwargs(kw)),
        alias=True,
    ),
]
MOMENT_CASES = [c for c in CASES if c.moments]


def _ids(cases):
    return [c.name for c in cases]


def _inner(case: Case, state):
    """The direction's own state (the first element of optax.chain's tuple)."""
    return state[0] if case.alias else state


def _with_inner(case: Case, state, inner):
    return (inner, *state[1:]) if case.alias else inner


def _direction(case: Case, updates):
    """The direction u_t: the optimizers' update is -1 * u_t (lr 1, no decay)."""
    return jax.tree.map(lambda u: -u, updates) if case.alias else updates


def _f32(x: float) -> float:
    return float(np.float32(x))


def _wide(x) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def _reference(kind: str, grads, *, b1=B1, b2=B2, eps=EPS, t0=0):
    """Float64 (complex128) directions u_1..u_T for one leaf, and (m, v, v_max).

    t0 is the step count before the first gradient; the count saturates at the
    int32 maximum, as adamx's does. Betas are the exact decimals: adamx forms
    1 - beta before rounding to float32.
    """
    m = v = v_max = 0.0
    out = []
    for i, g in enumerate(grads):
        g = _wide(g)
        t = min(t0 + i + 1, INT32_MAX)
        if kind == "bias":
            out.append(g / (1 - b2**t))
            continue
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * np.abs(g) ** 2
        if kind == "adam":
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        elif kind == "nesterov":
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
            v_hat = v / (1 - b2**t)
        elif kind == "amsgrad":
            v_max = np.maximum(v_max, v / (1 - b2**t))
            m_hat, v_hat = m / (1 - b1**t), v_max
        elif kind == "amsgrad_raw":
            v_max = np.maximum(v_max, v)
            m_hat, v_hat = m, v_max
        else:
            raise AssertionError(kind)
        out.append(m_hat / (np.sqrt(v_hat) + eps))
    return out, (m, v, v_max)


def _run(case: Case, tx, params, grads):
    """Updates of ``tx`` over ``grads``, and the final state."""
    state = tx.init(params)
    updates = []
    for g in grads:
        u, state = tx.update(g, state, params)
        updates.append(u)
    return updates, state


# Values exact in bfloat16 and float16, so the inputs are not rounded.
BASE = np.array([0.5, -1.25, 3.0, -0.375], np.float32)
STEP_SCALES = (1.0, -0.5, 2.0)


def _grads(dtype, base=BASE):
    return [jnp.asarray(s * base, dtype) for s in STEP_SCALES]


# --------------------------------------------------------------------------
# (a) nu_dtype
# --------------------------------------------------------------------------

STORAGE = [
    # (param dtype, mu_dtype, nu_dtype) -> (stored mu dtype, stored nu dtype)
    ((BF16, None, jnp.float32), (BF16, jnp.float32)),
    ((BF16, jnp.float32, None), (jnp.float32, BF16)),
    ((jnp.float32, None, BF16), (jnp.float32, BF16)),
    ((jnp.float32, BF16, BF16), (BF16, BF16)),
    ((BF16, jnp.float32, jnp.float32), (jnp.float32, jnp.float32)),
]


@pytest.mark.parametrize(("given", "stored"), STORAGE)
@pytest.mark.parametrize("case", MOMENT_CASES, ids=_ids(MOMENT_CASES))
def test_mu_and_nu_are_stored_in_their_declared_dtypes(case, given, stored):
    param_dtype, mu_dtype, nu_dtype = given
    mu_stored, nu_stored = (np.dtype(d) for d in stored)
    tx = case.build(mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    params = jnp.zeros(4, param_dtype)
    grads = _grads(param_dtype)
    state = tx.init(params)
    for step in range(len(grads) + 1):
        inner = _inner(case, state)
        assert inner.mu.dtype == mu_stored
        for name in case.moments[1:]:
            assert getattr(inner, name).dtype == nu_stored, name
        if step < len(grads):
            u, state = tx.update(grads[step], state, params)
            assert u.dtype == np.dtype(param_dtype)
    # The stored second moment is the float64 reference's, rounded once.
    _, (_, v, _) = _reference(case.kind, [np.asarray(g, np.float32) for g in grads])
    np.testing.assert_allclose(
        np.asarray(_inner(case, state).nu, np.float64),
        v,
        rtol=1e-6 if nu_stored == np.float32 else 2**-7,
    )


def test_optax_scale_by_adam_has_no_nu_dtype():
    """What adamx adds: optax lets the first moment's dtype be set, not the second's."""
    assert "mu_dtype" in inspect.signature(optax.scale_by_adam).parameters
    assert "nu_dtype" not in inspect.signature(optax.scale_by_adam).parameters
    with pytest.raises(TypeError):
        optax.scale_by_adam(nu_dtype=jnp.float32)
    state = adamx.scale_by_adam(nu_dtype=jnp.float32).init(jnp.zeros(2, BF16))
    assert state.nu.dtype == np.float32


# --------------------------------------------------------------------------
# (b) arithmetic in float32 or wider
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", MOMENT_CASES, ids=_ids(MOMENT_CASES))
def test_bfloat16_second_moment_uses_float32_b2(case):
    g = jnp.asarray(BASE, BF16)
    tx = case.build()
    u, state = tx.update(g, tx.init(jnp.zeros(4, BF16)), jnp.zeros(4, BF16))

    # What adamx must store: (1 - b2) * g**2 formed in float32, then rounded.
    g32 = np.asarray(g, np.float32)
    one = np.float32(1)
    expected_nu = ((one - np.float32(B2)) * g32 * g32).astype(BF16)
    expected_mu = ((one - np.float32(B1)) * g32).astype(BF16)
    inner = _inner(case, state)
    assert inner.nu.dtype == np.dtype(BF16)
    np.testing.assert_array_equal(np.asarray(inner.nu), expected_nu)
    np.testing.assert_array_equal(np.asarray(inner.mu), expected_mu)

    # The same step done in bfloat16 throughout: b2 rounds to 1, v stays 0
    # and the debiased v is 0/0.
    b2_narrow = np.asarray(B2, BF16)
    assert b2_narrow == 1
    g_narrow = np.asarray(g)
    v_narrow = (np.asarray(1, BF16) - b2_narrow) * g_narrow * g_narrow
    assert np.all(v_narrow == 0)
    with np.errstate(invalid="ignore"):
        assert np.all(np.isnan(v_narrow / (np.asarray(1, BF16) - b2_narrow)))
    assert np.all(np.asarray(inner.nu, np.float32) > 0)

    # adamx's first step is the reference's, rounded to bfloat16.
    expected_u = _reference(case.kind, [g32])[0][0]
    direction = np.asarray(_direction(case, u), np.float64)
    assert u.dtype == np.dtype(BF16)
    np.testing.assert_allclose(direction, expected_u, rtol=2**-8)


def test_bfloat16_bias_correction_uses_float32_decay():
    x = jnp.asarray(BASE, BF16)
    tx = adamx.bias_correction(B2)
    u, _ = tx.update(x, tx.init(x))
    assert u.dtype == np.dtype(BF16)
    # float32 arithmetic: x / (1 - 0.999) = 1000 x (to bfloat16 precision).
    expected = np.asarray(x, np.float64) / (1 - B2)
    np.testing.assert_allclose(np.asarray(u, np.float64), expected, rtol=2**-8)
    # bfloat16 arithmetic: 1 - 0.999**1 rounds to 0 and x / 0 is infinite.
    denominator = np.asarray(1, BF16) - np.asarray(B2, BF16)
    with np.errstate(divide="ignore"):
        assert np.all(np.isinf(np.asarray(x) / denominator))


DTYPE_RTOL = {
    np.dtype(BF16): 2**-8,
    np.dtype(jnp.float16): 2**-10,
    np.dtype(jnp.float32): 1e-5,
    np.dtype(jnp.complex64): 1e-5,
}


@pytest.mark.parametrize("storage", ["default", "float32"])
@pytest.mark.parametrize("dtype", list(DTYPE_RTOL), ids=str)
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_updates_come_out_in_the_gradient_dtype(case, dtype, storage):
    base = BASE.astype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        base = BASE + 1j * BASE[::-1]
    grads = _grads(dtype, base)
    kw = (
        {}
        if storage == "default"
        else {"mu_dtype": jnp.float32, "nu_dtype": jnp.float32}
    )
    tx = case.build(**kw)
    updates, _ = _run(case, tx, jnp.zeros(4, dtype), grads)
    expected, _ = _reference(case.kind, [np.asarray(g) for g in grads])
    # Stored narrow moments are rounded between steps, which the reference does
    # not model; with float32 storage every step is compared.
    steps = 1 if storage == "default" and dtype in NARROW else len(grads)
    for u, e in zip(updates[:steps], expected[:steps], strict=True):
        assert u.dtype == dtype
        direction = _wide(_direction(case, u))
        np.testing.assert_allclose(direction, e, rtol=DTYPE_RTOL[dtype])
    assert all(u.dtype == dtype for u in updates)


ARITHMETIC = {
    "abs",
    "add",
    "add_any",
    "div",
    "exp",
    "exp2",
    "expm1",
    "integer_pow",
    "log",
    "log1p",
    "max",
    "min",
    "mul",
    "neg",
    "pow",
    "rsqrt",
    "sqrt",
    "square",
    "sub",
}


def _equations(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs nested in its equations."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns"):
                    yield from _equations(sub)
                elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    yield from _equations(sub.jaxpr)


@pytest.mark.parametrize("dtype", [BF16, jnp.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_no_arithmetic_on_narrow_floats_in_the_jaxpr(case, dtype):
    """Only convert_element_type touches bfloat16/float16; the maths is float32.

    The optimizers are built with a realistic learning rate and weight decay,
    which must not be rounded to the parameter dtype either.
    """
    kw = {"lr": 1e-3, "wd": 1e-4} if case.name in ("adamw", "nadamw") else {}
    if case.alias and not kw:
        kw = {"lr": 1e-3}
    tx = case.build(**kw)
    params = jnp.ones(4, dtype)
    jaxpr = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p))(
        params, tx.init(params), params
    ).jaxpr
    equations = list(_equations(jaxpr))
    narrow = []
    for eqn in equations:
        avals = [v.aval for v in (*eqn.invars, *eqn.outvars)]
        if eqn.primitive.name in ARITHMETIC and any(
            getattr(a, "dtype", None) in NARROW for a in avals
        ):
            narrow.append(str(eqn))
    assert narrow == [], "arithmetic on narrow floats:\n" + "\n".join(narrow)
    # Not vacuous: the update is computed (in float32) and cast to the narrow dtype.
    names = {e.primitive.name for e in equations}
    assert "div" in names
    assert any(
        e.primitive.name == "convert_element_type"
        and np.dtype(e.params["new_dtype"]) == np.dtype(dtype)
        for e in equations
    )


# --------------------------------------------------------------------------
# (c) float16 with all-zero gradients
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_float16_zero_gradients_give_zero_updates(case):
    tx = case.build()
    params = jnp.asarray(BASE, jnp.float16)
    zeros = [jnp.zeros(4, jnp.float16)] * 5
    updates, state = _run(case, tx, params, zeros)
    for u in updates:
        assert u.dtype == np.float16
        np.testing.assert_array_equal(np.asarray(u, np.float32), 0.0)
    for name in case.moments:
        assert np.all(
            np.isfinite(np.asarray(getattr(_inner(case, state), name), np.float32))
        )


OPTAX_COUNTERPARTS = {
    "scale_by_adam": lambda: optax.scale_by_adam(),
    "scale_by_adam_nesterov": lambda: optax.scale_by_adam(nesterov=True),
    "scale_by_amsgrad": lambda: optax.scale_by_amsgrad(),
    "adam": lambda: optax.adam(1.0),
    "adamw": lambda: optax.adamw(1.0, weight_decay=0.0),
    "nadam": lambda: optax.nadam(1.0),
    "nadamw": lambda: optax.nadamw(1.0, weight_decay=0.0),
    "amsgrad": lambda: optax.amsgrad(1.0),
}


@pytest.mark.parametrize("name", list(OPTAX_COUNTERPARTS))
def test_optax_float16_zero_gradients_give_nan(name):
    """The contrast: optax adds eps = 1e-8 in float16, where it rounds to 0.

    Its update is then 0 / (sqrt(0) + 0) = NaN at every element.
    """
    assert np.float16(EPS) == 0
    tx = OPTAX_COUNTERPARTS[name]()
    params = jnp.asarray(BASE, jnp.float16)
    u, _ = tx.update(jnp.zeros(4, jnp.float16), tx.init(params), params)
    assert u.dtype == np.float16
    assert np.all(np.isnan(np.asarray(u, np.float32)))


# --------------------------------------------------------------------------
# (d) saturating count
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_count_saturates_at_int32_max(case):
    tx = case.build()
    params = jnp.zeros(4, jnp.float32)
    state = tx.init(params)
    state = _with_inner(
        case,
        state,
        _inner(case, state)._replace(count=jnp.asarray(INT32_MAX - 1, jnp.int32)),
    )
    grads = _grads(jnp.float32)
    updates = []
    for g in grads:
        u, state = tx.update(g, state, params)
        updates.append(u)
        count = _inner(case, state).count
        assert count.dtype == np.int32
        assert int(count) == INT32_MAX
    # Far past any warm-up 1 - b**t is 1 in float64, so the debiased limit
    # is the plain ratio m / (sqrt(v) + eps) (Nesterov: b1 m + (1 - b1) g).
    assert 1 - _f32(B1) ** INT32_MAX == 1.0 and 1 - _f32(B2) ** INT32_MAX == 1.0
    expected, _ = _reference(
        case.kind, [np.asarray(g) for g in grads], t0=INT32_MAX - 1
    )
    for u, e in zip(updates, expected, strict=True):
        assert np.all(np.isfinite(np.asarray(u)))
        np.testing.assert_allclose(_wide(_direction(case, u)), e, rtol=1e-5)


# --------------------------------------------------------------------------
# (e) complex parameters
# --------------------------------------------------------------------------

COMPLEX_BASE = np.array([0.5 - 1.0j, -1.25 + 0.25j, 3.0j, -0.375], np.complex64)


@pytest.mark.parametrize("case", MOMENT_CASES, ids=_ids(MOMENT_CASES))
def test_complex_second_moment_is_real_abs_square(case):
    tx = case.build()
    params = jnp.zeros(4, jnp.complex64)
    g = jnp.asarray(COMPLEX_BASE)
    _, state = tx.update(g, tx.init(params), params)
    inner = _inner(case, state)
    assert inner.mu.dtype == np.complex64
    for name in case.moments[1:]:
        assert getattr(inner, name).dtype == np.float32, name
    abs_sq = (
        COMPLEX_BASE.real.astype(np.float64) ** 2
        + COMPLEX_BASE.imag.astype(np.float64) ** 2
    )
    np.testing.assert_allclose(np.asarray(inner.nu), (1 - B2) * abs_sq, rtol=1e-6)
    # g**2 would be complex and cancel: for 3j it is -9, for |g|^2 it is 9.
    assert np.asarray(inner.nu)[2] > 0


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_complex_updates_match_complex_reference(case):
    tx = case.build()
    params = {"c": jnp.zeros(4, jnp.complex64), "r": jnp.zeros(4, jnp.float32)}
    grads = [
        {"c": jnp.asarray(s * COMPLEX_BASE), "r": jnp.asarray(s * BASE)}
        for s in STEP_SCALES
    ]
    updates, state = _run(case, tx, params, grads)
    for leaf, dtype in (("c", np.complex64), ("r", np.float32)):
        expected, (m, v, _) = _reference(
            case.kind, [np.asarray(g[leaf]) for g in grads]
        )
        for u, e in zip(updates, expected, strict=True):
            assert u[leaf].dtype == dtype
            np.testing.assert_allclose(_wide(_direction(case, u[leaf])), e, rtol=1e-5)
        if case.moments:
            inner = _inner(case, state)
            np.testing.assert_allclose(_wide(inner.mu[leaf]), m, rtol=1e-5)
            np.testing.assert_allclose(_wide(inner.nu[leaf]), v, rtol=1e-5)


# --------------------------------------------------------------------------
# Degenerate leaves
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_zero_size_and_scalar_leaves(case):
    tx = case.build()
    params = {
        "empty": jnp.zeros((0, 3), jnp.float32),
        "scalar": jnp.zeros((), jnp.float32),
        "vector": jnp.zeros(4, jnp.float32),
    }
    grads = [
        {
            "empty": jnp.zeros((0, 3), jnp.float32),
            "scalar": jnp.asarray(s * 0.75, jnp.float32),
            "vector": jnp.asarray(s * BASE),
        }
        for s in STEP_SCALES
    ]
    updates, state = _run(case, tx, params, grads)
    for leaf in params:
        expected, _ = _reference(case.kind, [np.asarray(g[leaf]) for g in grads])
        for u, e in zip(updates, expected, strict=True):
            assert u[leaf].shape == params[leaf].shape
            assert u[leaf].dtype == np.float32
            np.testing.assert_allclose(_wide(_direction(case, u[leaf])), e, rtol=1e-5)
        for name in case.moments:
            assert getattr(_inner(case, state), name)[leaf].shape == params[leaf].shape
