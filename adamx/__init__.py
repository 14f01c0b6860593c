"""adamx: Adam-family optimizers for JAX as pure Optax gradient transformations."""

from adamx import numerics as numerics
from adamx import storage as storage
from adamx.transforms.adam import ScaleByAdamState as ScaleByAdamState
from adamx.transforms.adam import adam as adam
from adamx.transforms.adam import adamw as adamw
from adamx.transforms.adam import nadam as nadam
from adamx.transforms.adam import nadamw as nadamw
from adamx.transforms.adam import scale_by_adam as scale_by_adam
from adamx.transforms.amsgrad import ScaleByAmsgradState as ScaleByAmsgradState
from adamx.transforms.amsgrad import amsgrad as amsgrad
from adamx.transforms.amsgrad import scale_by_amsgrad as scale_by_amsgrad
from adamx.transforms.bias_correction import BiasCorrectionState as BiasCorrectionState
from adamx.transforms.bias_correction import bias_correction as bias_correction

__version__ = "0.1.0"

__all__ = [
    "BiasCorrectionState",
    "ScaleByAdamState",
    "ScaleByAmsgradState",
    "adam",
    "adamw",
    "amsgrad",
    "bias_correction",
    "nadam",
    "nadamw",
    "numerics",
    "scale_by_adam",
    "scale_by_amsgrad",
    "storage",
]
