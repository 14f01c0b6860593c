"""The variant table of test_matrix and its float64 reference, in real/imaginary parts.

:data:`VARIANTS` holds every public adamx transform, built from
``adamx.__all__``:

* every ``scale_by_*`` direction with its default switches, and once more with
  each boolean switch (``nesterov``, ``epsilon_hat``, ``bias_correction_mu``,
  ``bias_correction_nu``, ``use_clipping``) flipped, plus AMSGrad's
  ``max_of="raw"``;
* ``bias_correction``;
* every optimizer alias (a factory with a ``learning_rate`` argument).

Each variant is built with the non-default hyperparameters of :data:`TEST_HP`
(those its factory accepts), so the reference below cannot agree with adamx
by sharing its defaults.

:func:`reference` is a float64 NumPy implementation of every family. It holds a
leaf as its pair of real and imaginary parts, ``(2, *shape)``: a first moment
is such a pair (the average of the real parts and of the imaginary parts), a
second moment is real, built from :math:`|g|^2 = \\mathrm{Re}(g)^2 +
\\mathrm{Im}(g)^2`, and an infinity norm or a clip bound acts on the modulus
of the pair. A real leaf is the pair with a zero imaginary part, so one
reference serves real and complex leaves.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import numpy as np
import optax

import adamx

DIRECTIONS = sorted(n for n in adamx.__all__ if n.startswith("scale_by_"))
OPTIMIZERS = sorted(
    n
    for n in adamx.__all__
    if inspect.isfunction(getattr(adamx, n))
    and "learning_rate" in inspect.signature(getattr(adamx, n)).parameters
)

# Each public transform's family in :func:`reference`, and the switches its
# name implies.
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "scale_by_adam": ("adam", {}),
    "adam": ("adam", {}),
    "adamw": ("adam", {}),
    "nadam": ("adam", {"nesterov": True}),
    "nadamw": ("adam", {"nesterov": True}),
    "scale_by_adam_atan2": ("atan2", {}),
    "adam_atan2": ("atan2", {}),
    "scale_by_adamax": ("adamax", {}),
    "adamax": ("adamax", {}),
    "adamaxw": ("adamax", {}),
    "scale_by_ademamix": ("ademamix", {}),
    "ademamix": ("ademamix", {}),
    "scale_by_adopt": ("adopt", {}),
    "adopt": ("adopt", {}),
    "adoptw": ("adopt", {}),
    "scale_by_amsgrad": ("amsgrad", {}),
    "amsgrad": ("amsgrad", {}),
    "scale_by_belief": ("belief", {}),
    "adabelief": ("belief", {}),
    "scale_by_lamb": ("lamb", {}),
    "lamb": ("lamb", {}),
    "scale_by_radam": ("radam", {}),
    "radam": ("radam", {}),
    "scale_by_yogi": ("yogi", {}),
    "yogi": ("yogi", {}),
    "bias_correction": ("bias", {}),
}

# Hyperparameters every variant is built with, where its factory takes them.
# b2 = 0.95 makes RAdam's rho_t reach the threshold 4.5 at step 5.
TEST_HP: dict[str, float] = {
    "learning_rate": 0.1,
    "b1": 0.8,
    "b2": 0.95,
    "b3": 0.99,
    "alpha": 2.0,
    "eps": 1e-3,
    "eps_root": 1e-4,
    "a": 1.5,
    "b": 2.0,
    "threshold": 4.5,
    "initial_accumulator_value": 1e-2,
    "weight_decay": 0.05,
    "decay": 0.9,
}

# Switches the reference knows, with their defaults.
SWITCHES = {
    "nesterov": False,
    "epsilon_hat": False,
    "bias_correction_mu": True,
    "bias_correction_nu": True,
    "use_clipping": True,
    "max_of": None,
}
EXTRA_OPTIONS: dict[str, list[dict[str, Any]]] = {
    "scale_by_amsgrad": [{"max_of": "raw"}],
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One public transform with a setting of its switches."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def id(self) -> str:
        return "-".join([self.name, *(f"{k}={v}" for k, v in self.options)])

    @property
    def alias(self) -> bool:
        return self.name in OPTIMIZERS

    @property
    def family(self) -> str:
        return FAMILIES[self.name][0]

    @property
    def parameters(self) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(getattr(adamx, self.name)).parameters)

    @property
    def hyperparameters(self) -> dict[str, float]:
        """The :data:`TEST_HP` values the factory takes."""
        return {k: v for k, v in TEST_HP.items() if k in self.parameters}

    def settings(self) -> dict[str, Any]:
        """Everything :func:`reference` needs: hyperparameters and switches."""
        return {
            **SWITCHES,
            **self.hyperparameters,
            **FAMILIES[self.name][1],
            **dict(self.options),
        }

    def build(self, **overrides: Any) -> optax.GradientTransformation:
        factory = getattr(adamx, self.name)
        return factory(**{**self.hyperparameters, **overrides}, **dict(self.options))


def _variants() -> list[Variant]:
    out = []
    for name in DIRECTIONS:
        out.append(Variant(name))
        for p in Variant(name).parameters.values():
            if isinstance(p.default, bool):  # every switch, positional or not
                out.append(Variant(name, ((p.name, not p.default),)))
        out.extend(Variant(name, tuple(o.items())) for o in EXTRA_OPTIONS.get(name, ()))
    out.append(Variant("bias_correction"))
    out.extend(Variant(name) for name in OPTIMIZERS)
    return out


VARIANTS = _variants()


def ids(variants: list[Variant]) -> list[str]:
    return [v.id for v in variants]


# ---------------------------------------------------------------------------
# Float64 reference on (real, imaginary) pairs
# ---------------------------------------------------------------------------


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


def reference(variant: Variant, grads: list[Any], param: Any) -> list[np.ndarray]:
    """Float64 (complex128) updates of one leaf for the gradients ``grads``.

    ``param`` stays fixed (the tests do not feed updates back when they compare
    with this reference). For a direction the update is the direction
    :math:`d_t`; for an optimizer it is :math:`-\\eta (d_t + \\lambda\\theta)`
    (LAMB puts :math:`\\lambda\\theta` inside its trust ratio instead).
    """
    s = variant.settings()
    family = variant.family
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
                    shrink = np.where(modulus > bound, bound / modulus, 1.0)
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
        if variant.alias:
            if family != "lamb" and "weight_decay" in s:
                d = d + s["weight_decay"] * theta
            d = -s["learning_rate"] * d
        out.append(_joined(d, is_complex))
    return out
