"""Float64 NumPy reference implementations of adamx's algorithms.

Everything here is textbook code for one array (a leaf): it takes that leaf's
gradients for steps t = 1, ..., T and returns the per-step results and the
final state. It computes in float64 (complex128 for complex gradients), uses
``1 - decay**t`` for bias correction as the papers write it, and shares no
code with adamx, so it is an independent statement of the equations the
tests hold adamx to.

The first part has one function per algorithm (:func:`adam`,
:func:`amsgrad`, :func:`bias_correction`, :func:`optimizer`); the second,
:func:`family_updates`, states every family of the catalogue in one loop on
(real, imaginary) pairs, for the table-driven tests.

Notation: g_t is the step-t gradient, m_t and v_t the biased first and second
moments, started at m_0 = v_0 = 0, and u_t the update direction before the
learning rate. The step count t is 1-based: the first update has t = 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "Moments",
    "OptimizerResult",
    "adam",
    "amsgrad",
    "as_wide",
    "bias_correction",
    "family_updates",
    "optimizer",
]


class Moments(NamedTuple):
    """Final state of a reference run for one leaf.

    Attributes:
      count: the number of steps taken, T.
      mu: m_T, the biased first moment (complex for complex gradients).
      nu: v_T, the biased second moment of |g| (always real).
      nu_max: the running maximum of AMSGrad's second moment, or None for Adam.
    """

    count: int
    mu: np.ndarray
    nu: np.ndarray
    nu_max: np.ndarray | None = None


class OptimizerResult(NamedTuple):
    """A full optimizer run for one leaf.

    Attributes:
      params: theta_1, ..., theta_T, the parameters after each step.
      updates: theta_t - theta_{t-1} for each step, i.e. -lr * (u_t + wd * theta_{t-1}).
      directions: u_t for each step, the direction before learning rate and decay.
      state: the direction's final moments.
    """

    params: list[np.ndarray]
    updates: list[np.ndarray]
    directions: list[np.ndarray]
    state: Moments


def as_wide(x: np.ndarray) -> np.ndarray:
    """``x`` as float64, or complex128 when it is complex."""
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def _abs_sq(g: np.ndarray) -> np.ndarray:
    """|g|^2 = Re(g)^2 + Im(g)^2, real for complex g."""
    return np.real(g * np.conj(g))


def bias_correction(
    xs: Sequence[np.ndarray], decay: float
) -> tuple[list[np.ndarray], int]:
    """Divides each input by the bias of a zero-started moving average.

    u_t = x_t / (1 - decay^t),  t = 1, ..., T.

    Returns:
      (the list of u_t, the final count T).
    """
    out = []
    for t, x in enumerate(xs, start=1):
        out.append(as_wide(x) / (1.0 - decay**t))
    return out, len(xs)


def adam(
    grads: Sequence[np.ndarray],
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    nesterov: bool = False,
) -> tuple[list[np.ndarray], Moments]:
    """Adam's direction (Kingma & Ba 2015, Algorithm 1), optionally NAdam's.

    m_t = b1 m_{t-1} + (1 - b1) g_t
    v_t = b2 v_{t-1} + (1 - b2) |g_t|^2
    m_hat_t = m_t / (1 - b1^t)                                   (nesterov=False)
    m_hat_t = b1 m_t / (1 - b1^(t+1)) + (1 - b1) g_t / (1 - b1^t)  (nesterov=True)
    v_hat_t = v_t / (1 - b2^t)
    u_t = m_hat_t / (sqrt(v_hat_t + eps_root) + eps)

    Returns:
      (the list of u_t, the final Moments with nu_max None).
    """
    m = v = None
    directions = []
    for t, g in enumerate(grads, start=1):
        g = as_wide(g)
        if m is None:
            m = np.zeros_like(g)
            v = np.zeros(g.shape, dtype=np.float64)
        m = b1 * m + (1.0 - b1) * g
        v = b2 * v + (1.0 - b2) * _abs_sq(g)
        if nesterov:
            m_hat = b1 * m / (1.0 - b1 ** (t + 1)) + (1.0 - b1) * g / (1.0 - b1**t)
        else:
            m_hat = m / (1.0 - b1**t)
        v_hat = v / (1.0 - b2**t)
        directions.append(m_hat / (np.sqrt(v_hat + eps_root) + eps))
    return directions, Moments(len(grads), m, v)


def amsgrad(
    grads: Sequence[np.ndarray],
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    bias_correction: bool = True,
) -> tuple[list[np.ndarray], Moments]:
    """AMSGrad's direction, in two conventions.

    Both start from m_0 = v_0 = v_max_0 = 0 and update

    m_t = b1 m_{t-1} + (1 - b1) g_t
    v_t = b2 v_{t-1} + (1 - b2) |g_t|^2

    bias_correction=False (Reddi, Kale & Kumar 2018, Algorithm 2, constant b1):
      v_max_t = max(v_max_{t-1}, v_t)
      u_t = m_t / (sqrt(v_max_t + eps_root) + eps)

    bias_correction=True (optax.scale_by_amsgrad's convention):
      v_max_t = max(v_max_{t-1}, v_t / (1 - b2^t))
      u_t = (m_t / (1 - b1^t)) / (sqrt(v_max_t + eps_root) + eps)

    Returns:
      (the list of u_t, the final Moments with nu_max = v_max_T).
    """
    m = v = v_max = None
    directions = []
    for t, g in enumerate(grads, start=1):
        g = as_wide(g)
        if m is None:
            m = np.zeros_like(g)
            v = np.zeros(g.shape, dtype=np.float64)
            v_max = np.zeros(g.shape, dtype=np.float64)
        m = b1 * m + (1.0 - b1) * g
        v = b2 * v + (1.0 - b2) * _abs_sq(g)
        if bias_correction:
            v_max = np.maximum(v_max, v / (1.0 - b2**t))
            m_hat = m / (1.0 - b1**t)
        else:
            v_max = np.maximum(v_max, v)
            m_hat = m
        directions.append(m_hat / (np.sqrt(v_max + eps_root) + eps))
    return directions, Moments(len(grads), m, v, v_max)


def optimizer(
    name: str,
    theta0: np.ndarray,
    grads: Sequence[np.ndarray],
    learning_rate: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    bias_correction: bool = True,
) -> OptimizerResult:
    """A full optimizer run: the direction u_t, decoupled weight decay, learning rate.

    theta_t = theta_{t-1} - lr * (u_t + wd * theta_{t-1})   (Loshchilov & Hutter 2019)

    where u_t is :func:`adam`'s direction for "adam" and "adamw" (with
    ``nesterov``), NAdam's for "nadam" and "nadamw", and :func:`amsgrad`'s
    (with ``bias_correction``) for "amsgrad". "adam", "nadam" and "amsgrad"
    have no weight decay, so ``weight_decay`` must be 0 for them. The
    gradients are given in advance (they do not depend on theta).
    """
    if name in ("adam", "nadam", "amsgrad") and weight_decay != 0.0:
        raise ValueError(f"{name} has no weight decay")
    if name in ("adam", "adamw"):
        directions, state = adam(grads, b1, b2, eps, eps_root, nesterov=nesterov)
    elif name in ("nadam", "nadamw"):
        directions, state = adam(grads, b1, b2, eps, eps_root, nesterov=True)
    elif name == "amsgrad":
        directions, state = amsgrad(
            grads, b1, b2, eps, eps_root, bias_correction=bias_correction
        )
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    theta = as_wide(theta0)
    params, updates = [], []
    for u in directions:
        step = -learning_rate * (u + weight_decay * theta)
        theta = theta + step
        params.append(theta)
        updates.append(step)
    return OptimizerResult(params, updates, directions, state)


# ---------------------------------------------------------------------------
# Every family at once, on (real, imaginary) pairs
# ---------------------------------------------------------------------------
#
# :func:`family_updates` is the reference of every catalogued transform
# (tests/catalogue.py names each transform's family). It holds a leaf as its
# pair of real and imaginary parts, ``(2, *shape)``: a first moment is such a
# pair (the average of the real parts and of the imaginary parts), a second
# moment is real, built from |g|^2 = Re(g)^2 + Im(g)^2, and an infinity norm
# or a clip bound acts on the modulus of the pair. A real leaf is the pair
# with a zero imaginary part, so one reference serves real and complex leaves.


def split(x: Any) -> np.ndarray:
    """A leaf as the float64 pair ``(real part, imaginary part)``."""
    x = np.asarray(x)
    return np.stack([x.real, x.imag]).astype(np.float64)


def _sq(pair: np.ndarray) -> np.ndarray:
    """|z|^2 of each entry."""
    return pair[0] ** 2 + pair[1] ** 2


def _joined(pair: np.ndarray, is_complex: bool) -> np.ndarray:
    if is_complex:
        return pair[0] + 1j * pair[1]
    assert not np.any(pair[1]), "a real leaf's imaginary part must stay zero"
    return pair[0]


def family_updates(
    family: str,
    settings: dict[str, Any],
    grads: Sequence[Any],
    param: Any,
    *,
    optimizer: bool,
) -> list[np.ndarray]:
    """Float64 (complex128) updates of one leaf for the gradients ``grads``.

    ``family`` is one of "adam", "amsgrad", "adamax", "adopt", "ademamix",
    "atan2", "belief", "lamb", "radam", "yogi" and "bias" (bias correction
    alone); ``settings`` holds the hyperparameters and the switches
    ``nesterov``, ``epsilon_hat``, ``bias_correction_mu``,
    ``bias_correction_nu``, ``use_clipping`` and ``max_of``. ADOPT's clip
    bound is the default one, ``(t - 1) ** 0.25``.
    ``param`` stays fixed (the tests do not feed updates back when they compare
    with this reference). For a direction the update is the direction
    :math:`d_t`; for an optimizer it is :math:`-\\eta (d_t + \\lambda\\theta)`
    (LAMB puts :math:`\\lambda\\theta` inside its trust ratio instead).
    """
    s = settings
    is_complex = np.iscomplexobj(param) or any(np.iscomplexobj(g) for g in grads)
    theta = split(param)
    zero_pair = np.zeros_like(theta)
    b1, b2, eps, eps_root = (s.get(k, 0.0) for k in ("b1", "b2", "eps", "eps_root"))
    start = s.get("initial_accumulator_value", 0.0) if family == "yogi" else 0.0
    m = zero_pair.copy()
    m[0] = start
    m_slow = zero_pair.copy()
    v = np.full(theta.shape[1:], start)
    v_max = np.zeros(theta.shape[1:])
    out = []
    for t, g in enumerate(grads, start=1):
        G = split(g)
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        if family == "bias":
            d = G / (1 - s["decay"] ** t)
        elif family == "adopt":
            if t == 1:
                d = zero_pair
            else:
                n = G / np.maximum(np.sqrt(v + eps_root), eps)
                if s["use_clipping"]:
                    # The clip value is a function of the count before the step.
                    bound = (t - 1) ** 0.25
                    modulus = np.sqrt(_sq(n))
                    clipped = modulus > bound  # never at a zero modulus
                    shrink = np.where(clipped, bound / np.where(clipped, modulus, 1), 1)
                    n = n * shrink
                m = b1 * m + (1 - b1) * n
                d = b1 * m + (1 - b1) * n if s["nesterov"] else m
            v = _sq(G) if t == 1 else b2 * v + (1 - b2) * _sq(G)
        elif family == "adamax":
            m = b1 * m + (1 - b1) * G
            v = np.maximum(b2 * v, np.sqrt(_sq(G)) + eps)
            d = m / bc1 / v
        else:
            m = b1 * m + (1 - b1) * G
            if family == "yogi":
                v = v - (1 - b2) * np.sign(v - _sq(G)) * _sq(G)
            elif family == "belief":
                v = b2 * v + (1 - b2) * _sq(G - m) + eps_root
            else:
                v = b2 * v + (1 - b2) * _sq(G)
            if s["nesterov"]:
                m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * G / bc1
            else:
                m_hat = m / bc1
            v_hat = v / bc2
            e, r = eps, eps_root
            if s["epsilon_hat"]:
                e, r = eps / np.sqrt(bc2), eps_root / bc2
            if family == "belief":
                r = 0.0  # eps_root is inside the second moment
            if family == "amsgrad":
                if not s["bias_correction_mu"]:
                    m_hat = b1 * m + (1 - b1) * G if s["nesterov"] else m
                if not s["bias_correction_nu"]:
                    v_max = np.maximum(v_max, v)
                    v_hat = v_max
                elif s["max_of"] == "raw":
                    v_max = np.maximum(v_max, v)
                    v_hat = v_max / bc2
                else:
                    v_max = np.maximum(v_max, v_hat)
                    v_hat = v_max
            if family == "ademamix":
                m_slow = s["b3"] * m_slow + (1 - s["b3"]) * G
                m_hat = m_hat + s["alpha"] * m_slow
            if family == "atan2":
                d = s["a"] * np.arctan2(m_hat, s["b"] * np.sqrt(v_hat + r))
            else:
                d = m_hat / (np.sqrt(v_hat + r) + e)
            if family == "radam":
                rho_inf = 2 / (1 - b2) - 1
                rho = rho_inf - 2 * t * b2**t / bc2
                if rho >= s["threshold"]:
                    d = d * np.sqrt(
                        (rho - 4)
                        * (rho - 2)
                        * rho_inf
                        / ((rho_inf - 4) * (rho_inf - 2) * rho)
                    )
                else:
                    d = m_hat
            if family == "lamb":
                d = d + s["weight_decay"] * theta
                theta_norm = np.sqrt(np.sum(_sq(theta)))
                d_norm = np.sqrt(np.sum(_sq(d)))
                if theta_norm > 0 and d_norm > 0:
                    d = d * (theta_norm / d_norm)
        if optimizer:
            if family != "lamb" and "weight_decay" in s:
                d = d + s["weight_decay"] * theta
            d = -s["learning_rate"] * d
        out.append(_joined(d, is_complex))
    return out
