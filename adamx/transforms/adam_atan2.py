"""Adam-atan2: Adam without epsilon, its ratio replaced by an arctangent."""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from adamx import numerics
from adamx._alias import optimizer
from adamx._transform import (
    Hyperparameter,
    adam_moments,
    debiased_signal,
    moment_transform,
)
from adamx._validation import DECAY, NON_NEGATIVE, caller_name
from adamx.storage import moment_storages
from adamx.transforms.adam import ScaleByAdamState


def _reject_complex(caller: str, what: str, tree: Any) -> None:
    """Raises TypeError naming the first complex leaf of ``tree``."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = jnp.result_type(leaf)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(
                f"{caller}: {what} leaf {jax.tree_util.keystr(path) or '<root>'} has "
                f"dtype {dtype}; atan2 is defined for real numbers only (optimize "
                "the real and imaginary parts as separate real leaves, or use "
                "scale_by_adam)"
            )


def scale_by_adam_atan2(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    a: ArrayLike = 1.27,
    b: ArrayLike = 1.0,
    eps_root: ArrayLike = 0.0,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Scales updates by :math:`a\,\mathrm{atan2}(\hat m, b\sqrt{\hat v})`: no epsilon.

    Adam's :math:`\epsilon` is there only to keep :math:`\hat m/\sqrt{\hat v}`
    finite, yet it sets a gradient scale below which Adam turns into
    momentum SGD, and Everett et al. (2024) find that it must be scaled with
    model width to avoid gradient underflow. Adam-atan2 replaces the ratio
    by the angle of the point :math:`(b\sqrt{\hat v}, \hat m)`, which needs
    no :math:`\epsilon` at all.
    For each leaf, at step :math:`t = 1, 2, \dots`:

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2 \\
        \hat m_t &= m_t / (1 - \beta_1^t), \qquad
        \hat v_t = v_t / (1 - \beta_2^t) \\
        u_t &= a \operatorname{atan2}\bigl(\hat m_t,\;
               b \sqrt{\hat v_t + \epsilon_{root}}\bigr)

    from :math:`m_0 = v_0 = 0`. Symbols map to arguments as
    :math:`\beta_1` = ``b1``, :math:`\beta_2` = ``b2``, :math:`a` = ``a``,
    :math:`b` = ``b`` and :math:`\epsilon_{root}` = ``eps_root``.

    **Why no epsilon is needed.** :math:`\operatorname{atan2}(y, x)` is
    defined and finite everywhere, :math:`\operatorname{atan2}(0, 0) = 0`
    included, so all-zero gradients give exactly zero updates. It is
    bounded, :math:`|u_t| \le a\pi/2`. It depends only on the ratio
    :math:`y/x`, so with ``eps_root=0`` the update is invariant to
    rescaling the gradients by any :math:`c > 0` (exactly, bit for bit, for
    powers of two), as long as :math:`g^2` neither underflows nor overflows:
    about :math:`10^{-18} < |g| < 10^{18}` in float32. Adam with
    :math:`\epsilon > 0` is not invariant. For :math:`|\hat m| \ll b\sqrt{\hat v}` it
    is :math:`(a/b)\, \hat m/\sqrt{\hat v}`, Adam's ratio; for a constant
    gradient, where :math:`|\hat m| = \sqrt{\hat v}`, it is
    :math:`a \arctan(1/b)`, which the defaults :math:`a = 1.27 \approx
    4/\pi`, :math:`b = 1` make :math:`\approx 0.9975`, Adam's step of 1.

    **Constants.** The paper introduces the atan2 form of the update; the
    defaults ``a=1.27``, ``b=1`` are those of the reference PyTorch
    implementation, lucidrains/adam-atan2-pytorch (whose ``betas``
    default is (0.9, 0.99); adamx keeps Adam's 0.999).

    **Complex parameters** are refused with a TypeError naming the leaf:
    :math:`\operatorname{atan2}` needs a real :math:`\hat m`, and no
    extension to complex numbers is given in the paper.

    Arithmetic runs in float32 or wider; moments are stored in their
    declared dtypes and updates come out in the gradient's dtype.

    Args:
      b1: :math:`\beta_1`, decay of the first moment, in [0, 1).
      b2: :math:`\beta_2`, decay of the second moment, in [0, 1).
      a: :math:`a`, the scale of the update; >= 0.
      b: :math:`b`, the scale of :math:`\sqrt{\hat v}` against
        :math:`\hat m`; >= 0 (0 gives :math:`a\pi/2` times the sign of
        :math:`\hat m`).
      eps_root: :math:`\epsilon_{root}`, added under the square root; >= 0.
        Only for differentiating *through* the update at :math:`g = 0`
        (meta-learning): a positive value gives up exact scale invariance.
      mu_dtype: how :math:`m` is stored: a dtype, ``"int8"``,
        ``"int4"``, :class:`adamx.Quantized`, :class:`adamx.StochasticRounding`
        or :class:`adamx.Rounded` (:mod:`adamx.storage`); None for each
        parameter's dtype.
      nu_dtype: how :math:`v` is stored: a dtype, ``"int8"``,
        ``"int4"``, :class:`adamx.Quantized`, :class:`adamx.StochasticRounding`
        or :class:`adamx.Rounded` (:mod:`adamx.storage`); None for each
        parameter's real dtype.

    Returns:
      An ``optax.GradientTransformation`` with state
      :class:`adamx.transforms.adam.ScaleByAdamState`.

    Raises:
      ValueError: at construction, for a concrete hyperparameter out of range
        or an unknown dtype, quoting the call.
      TypeError: at ``init``/``update``, for a complex leaf, naming its path.

    Example:
      A constant gradient gives :math:`1.27 \cdot \pi/4` at every scale, and
      a zero gradient gives 0, with no epsilon anywhere:

      >>> import jax.numpy as jnp
      >>> from adamx.transforms.adam_atan2 import scale_by_adam_atan2
      >>> tx = scale_by_adam_atan2()
      >>> grads = jnp.array([1e-15, 1.0, 1e15, 0.0, -1.0])
      >>> updates, _ = tx.update(grads, tx.init(jnp.zeros(5)))
      >>> print(updates.round(4))
      [ 0.9975  0.9975  0.9975  0.     -0.9975]

    References:
      Everett, Xiao, Wortsman, Alemi, Novak, Liu, Gur, Sohl-Dickstein,
      Kaelbling, Lee & Pennington, *Scaling Exponents Across
      Parameterizations and Optimizers*, ICML 2024.
      https://arxiv.org/abs/2407.05872

      Wang (lucidrains), *adam-atan2-pytorch*, reference implementation.
      https://github.com/lucidrains/adam-atan2-pytorch
    """
    caller = caller_name("scale_by_adam_atan2")
    hyperparameters = {
        "b1": Hyperparameter(b1, DECAY),
        "b2": Hyperparameter(b2, DECAY),
        "a": Hyperparameter(a, NON_NEGATIVE),
        "b": Hyperparameter(b, NON_NEGATIVE),
        "eps_root": Hyperparameter(eps_root, NON_NEGATIVE),
    }
    storages = moment_storages(caller, mu_dtype, nu_dtype)

    def direction(g, m, v, *, count, b1, b2, a, b, eps_root):
        m_hat = numerics.bias_correction(m, b1, count)
        v_hat = numerics.bias_correction(v, b2, count)
        return a * jnp.arctan2(m_hat, b * jnp.sqrt(v_hat + eps_root))

    inner = moment_transform(
        caller,
        ScaleByAdamState,
        storages,
        hyperparameters,
        moments=adam_moments,
        direction=direction,
        signal=debiased_signal,
        monotone=True,
    )

    def init_fn(params):
        _reject_complex(caller, "parameter", params)
        return inner.init(params)

    def update_fn(updates, state, params=None):
        _reject_complex(caller, "update", updates)
        return inner.update(updates, state, params)

    return optax.GradientTransformation(init_fn, update_fn)


def adam_atan2(
    learning_rate: optax.ScalarOrSchedule,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    a: ArrayLike = 1.27,
    b: ArrayLike = 1.0,
    eps_root: ArrayLike = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any = None,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam-atan2 with optional decoupled weight decay.

    .. math:: \theta_t = \theta_{t-1} - \alpha_t\,(u_t + \lambda\,\theta_{t-1})

    with :math:`u_t` from :func:`scale_by_adam_atan2`, :math:`\alpha` =
    ``learning_rate`` and :math:`\lambda` = ``weight_decay`` (each a float or
    a schedule), the decay applied as in AdamW and limited to some leaves by
    ``mask``. With the default ``weight_decay=0.0`` no decay step is chained,
    so ``update`` needs no ``params``. (The reference implementation instead
    shrinks :math:`\theta` by :math:`1 - \lambda\,\alpha_t/\alpha_0`, a
    decay not multiplied by the learning rate; use ``weight_decay``
    :math:`= \lambda/\alpha_0` here for the same effect with a constant
    rate.)
    """
    return optimizer(
        "adam_atan2",
        scale_by_adam_atan2,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        mask=mask,
        b1=b1,
        b2=b2,
        a=a,
        b=b,
        eps_root=eps_root,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )
