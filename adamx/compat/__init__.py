"""Framework presets: one call that reproduces another framework's optimizer.

Each preset takes that framework's own argument names and defaults and returns
an ``optax.GradientTransformation`` assembled from adamx's public pieces; none
carries a copy of the algorithm.

- :mod:`adamx.compat.torch`: ``torch.optim.Adam`` and ``torch.optim.AdamW``.
- :mod:`adamx.compat.keras`: ``keras.optimizers.Adam`` and ``keras.optimizers.AdamW``.
"""

from adamx.compat import keras as keras
from adamx.compat import torch as torch

__all__ = ["keras", "torch"]
