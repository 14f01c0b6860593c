"""adamx: Adam-family optimizers for JAX as pure Optax gradient transformations."""

from adamx import compat as compat
from adamx import diagnostics as diagnostics
from adamx import guards as guards
from adamx import low_precision as low_precision
from adamx import numerics as numerics
from adamx import quantization as quantization
from adamx import sharding as sharding
from adamx import storage as storage
from adamx.diagnostics import Stats as Stats
from adamx.diagnostics import WithStatsState as WithStatsState
from adamx.diagnostics import with_stats as with_stats
from adamx.guards import NonfiniteState as NonfiniteState
from adamx.guards import SpikeState as SpikeState
from adamx.guards import nonfinite_policy as nonfinite_policy
from adamx.guards import skip_spikes as skip_spikes
from adamx.low_precision import LowPrecisionParamsState as LowPrecisionParamsState
from adamx.low_precision import low_precision_params as low_precision_params
from adamx.sharding import abstract_state as abstract_state
from adamx.sharding import state_shardings as state_shardings
from adamx.storage import Quantized as Quantized
from adamx.storage import QuantizedArray as QuantizedArray
from adamx.storage import Rounded as Rounded
from adamx.storage import StochasticRounding as StochasticRounding
from adamx.storage import state_nbytes as state_nbytes
from adamx.transforms.adam import ScaleByAdamState as ScaleByAdamState
from adamx.transforms.adam import adam as adam
from adamx.transforms.adam import adamw as adamw
from adamx.transforms.adam import nadam as nadam
from adamx.transforms.adam import nadamw as nadamw
from adamx.transforms.adam import scale_by_adam as scale_by_adam
from adamx.transforms.adam_atan2 import adam_atan2 as adam_atan2
from adamx.transforms.adam_atan2 import scale_by_adam_atan2 as scale_by_adam_atan2
from adamx.transforms.adamax import ScaleByAdamaxState as ScaleByAdamaxState
from adamx.transforms.adamax import adamax as adamax
from adamx.transforms.adamax import adamaxw as adamaxw
from adamx.transforms.adamax import scale_by_adamax as scale_by_adamax
from adamx.transforms.ademamix import ScaleByAdemamixState as ScaleByAdemamixState
from adamx.transforms.ademamix import ademamix as ademamix
from adamx.transforms.ademamix import ademamix_b3_schedule as ademamix_b3_schedule
from adamx.transforms.ademamix import scale_by_ademamix as scale_by_ademamix
from adamx.transforms.adopt import ScaleByAdoptState as ScaleByAdoptState
from adamx.transforms.adopt import adopt as adopt
from adamx.transforms.adopt import adoptw as adoptw
from adamx.transforms.adopt import scale_by_adopt as scale_by_adopt
from adamx.transforms.amsgrad import ScaleByAmsgradState as ScaleByAmsgradState
from adamx.transforms.amsgrad import amsgrad as amsgrad
from adamx.transforms.amsgrad import scale_by_amsgrad as scale_by_amsgrad
from adamx.transforms.belief import ScaleByBeliefState as ScaleByBeliefState
from adamx.transforms.belief import adabelief as adabelief
from adamx.transforms.belief import scale_by_belief as scale_by_belief
from adamx.transforms.bias_correction import BiasCorrectionState as BiasCorrectionState
from adamx.transforms.bias_correction import bias_correction as bias_correction
from adamx.transforms.lamb import lamb as lamb
from adamx.transforms.lamb import scale_by_lamb as scale_by_lamb
from adamx.transforms.radam import radam as radam
from adamx.transforms.radam import scale_by_radam as scale_by_radam
from adamx.transforms.yogi import ScaleByYogiState as ScaleByYogiState
from adamx.transforms.yogi import scale_by_yogi as scale_by_yogi
from adamx.transforms.yogi import yogi as yogi

__version__ = "0.2.0"

__all__ = [
    "BiasCorrectionState",
    "LowPrecisionParamsState",
    "NonfiniteState",
    "Quantized",
    "QuantizedArray",
    "Rounded",
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByAdemamixState",
    "ScaleByAdoptState",
    "ScaleByAmsgradState",
    "ScaleByBeliefState",
    "ScaleByYogiState",
    "SpikeState",
    "Stats",
    "StochasticRounding",
    "WithStatsState",
    "abstract_state",
    "adabelief",
    "adam",
    "adam_atan2",
    "adamax",
    "adamaxw",
    "adamw",
    "ademamix",
    "ademamix_b3_schedule",
    "adopt",
    "adoptw",
    "amsgrad",
    "bias_correction",
    "compat",
    "diagnostics",
    "guards",
    "lamb",
    "low_precision",
    "low_precision_params",
    "nadam",
    "nadamw",
    "nonfinite_policy",
    "numerics",
    "quantization",
    "radam",
    "scale_by_adam",
    "scale_by_adam_atan2",
    "scale_by_adamax",
    "scale_by_ademamix",
    "scale_by_adopt",
    "scale_by_amsgrad",
    "scale_by_belief",
    "scale_by_lamb",
    "scale_by_radam",
    "scale_by_yogi",
    "sharding",
    "skip_spikes",
    "state_nbytes",
    "state_shardings",
    "storage",
    "with_stats",
    "yogi",
]
