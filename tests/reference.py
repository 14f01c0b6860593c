"""Float64 NumPy reference implementations of adamx's algorithms.

Everything here is textbook code for one array (a leaf): it takes that leaf's
gradients for steps t = 1, ..., T and returns the per-step results and the
final state. It computes in float64 (complex128 for complex gradients), uses
``1 - decay**t`` for bias correction as the papers write it, and shares no
code with adamx, so it is an independent statement of the equations the
tests hold adamx to.

Notation: g_t is the step-t gradient, m_t and v_t the biased first and second
moments, started at m_0 = v_0 = 0, and u_t the update direction before the
learning rate. The step count t is 1-based: the first update has t = 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "Moments",
    "OptimizerResult",
    "adam",
    "amsgrad",
    "as_wide",
    "bias_correction",
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
