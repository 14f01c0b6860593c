"""The catalogue: every public adamx transform, and what the tests need to know.

Every table-driven test takes its transforms from here, not from
``adamx.__all__``: adding a variant to the library means adding one
:class:`Entry` to :data:`CATALOGUE` (and a test file for what is special
about it). ``tests/test_catalogue.py`` fails, naming the function, when a
public function is neither a row here nor listed as a wrapper or a utility.

A row says:

* ``name``: the public factory, ``adamx.<name>``;
* ``family``: its algorithm in the float64 reference
  :func:`reference.family_updates`;
* ``role``: ``DIRECTION`` (a ``scale_by_*``: the update is the direction
  itself), ``OPTIMIZER`` (takes a learning rate: the update is a parameter
  step) or ``BIAS`` (``bias_correction``);
* ``moments``: the moment fields its state holds, in order (found in a state
  by :func:`moments`);
* ``implied``: the switches its name implies (``nadam`` is Nesterov's Adam);
* ``complex_refusal``: why it refuses complex leaves, as its error says, or
  None when it takes them;
* ``rounded_storage``: whether it accepts ``adamx.Rounded`` storage (ADOPT's
  step needs the moment from before the update, so it refuses).

What follows from the signature is derived, not written down: the
hyperparameters a factory takes, whether it stores moments (``mu_dtype``),
whether its weight decay takes a mask.

:data:`VARIANTS` is every row with its default switches, and every direction
once more with each boolean switch flipped (plus AMSGrad's ``max_of="raw"``),
each built with the non-default hyperparameters of :data:`TEST_HP` so that a
reference cannot agree with adamx by sharing its defaults.

A new variant of an existing family is one row. A new family also needs its
branch in :func:`reference.family_updates`; a new hyperparameter, a value in
:data:`TEST_HP` (without one the tables run it at its default) and its range
in test_errors' ``RULES`` (a test there fails naming any argument without
one).

The state finders, :func:`moments`, :func:`counts`, :func:`moment_state`,
:func:`count_state` and :func:`moment_view`, are the one place tests look
for moments and counts inside a (chained, masked, wrapped) state.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optax
import reference

import adamx

DIRECTION, OPTIMIZER, BIAS = "direction", "optimizer", "bias"

# The moment fields of each kind of state.
MU_NU = ("mu", "nu")
MU_NU_MAX = ("mu", "nu", "nu_max")
MU_SLOW_NU = ("mu", "mu_slow", "nu")
NO_MOMENTS = ()
NESTEROV = (("nesterov", True),)
ATAN2_REFUSAL = "atan2 is defined"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One public transform of the Adam family; see the module docstring."""

    name: str
    family: str
    role: str
    moments: tuple[str, ...] = MU_NU
    implied: tuple[tuple[str, Any], ...] = ()
    complex_refusal: str | None = None
    rounded_storage: bool = True

    @property
    def factory(self) -> Callable[..., optax.GradientTransformation]:
        return getattr(adamx, self.name)

    @property
    def parameters(self) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(self.factory).parameters)

    @property
    def is_optimizer(self) -> bool:
        return self.role == OPTIMIZER

    @property
    def takes_storage(self) -> bool:
        """Whether it stores moments whose dtype ``mu_dtype``/``nu_dtype`` set."""
        return "mu_dtype" in self.parameters

    @property
    def decoupled(self) -> bool:
        """Whether it has a decoupled weight decay that takes a mask."""
        return "mask" in self.parameters and self.is_optimizer

    @property
    def complex_ok(self) -> bool:
        return self.complex_refusal is None

    @property
    def required(self) -> dict[str, Any]:
        """Values for the arguments the factory cannot do without."""
        return {k: v for k, v in REQUIRED.items() if k in self.parameters}

    def build(self, **overrides: Any) -> optax.GradientTransformation:
        """The transform with its default hyperparameters (and ``overrides``)."""
        return self.factory(**{**self.required, **overrides})


CATALOGUE: tuple[Entry, ...] = (
    # Adam, NAdam and their decoupled-decay forms.
    Entry("scale_by_adam", "adam", DIRECTION),
    Entry("adam", "adam", OPTIMIZER),
    Entry("adamw", "adam", OPTIMIZER),
    Entry("nadam", "adam", OPTIMIZER, implied=NESTEROV),
    Entry("nadamw", "adam", OPTIMIZER, implied=NESTEROV),
    Entry("scale_by_amsgrad", "amsgrad", DIRECTION, MU_NU_MAX),
    Entry("amsgrad", "amsgrad", OPTIMIZER, MU_NU_MAX),
    Entry("bias_correction", "bias", BIAS, NO_MOMENTS),
    Entry("scale_by_adamax", "adamax", DIRECTION),
    Entry("adamax", "adamax", OPTIMIZER),
    Entry("adamaxw", "adamax", OPTIMIZER),
    Entry("scale_by_yogi", "yogi", DIRECTION),
    Entry("yogi", "yogi", OPTIMIZER),
    Entry("scale_by_belief", "belief", DIRECTION),
    Entry("adabelief", "belief", OPTIMIZER),
    Entry("scale_by_radam", "radam", DIRECTION),
    Entry("radam", "radam", OPTIMIZER),
    Entry("scale_by_lamb", "lamb", DIRECTION),
    Entry("lamb", "lamb", OPTIMIZER),
    Entry("scale_by_adam_atan2", "atan2", DIRECTION, complex_refusal=ATAN2_REFUSAL),
    Entry("adam_atan2", "atan2", OPTIMIZER, complex_refusal=ATAN2_REFUSAL),
    Entry("scale_by_adopt", "adopt", DIRECTION, rounded_storage=False),
    Entry("adopt", "adopt", OPTIMIZER, rounded_storage=False),
    Entry("adoptw", "adopt", OPTIMIZER, rounded_storage=False),
    Entry("scale_by_ademamix", "ademamix", DIRECTION, MU_SLOW_NU),
    Entry("ademamix", "ademamix", OPTIMIZER, MU_SLOW_NU),
)

# Public transforms that wrap another one (``inner``): not Adam variants
# themselves, but a checkpoint or an API test must still see them.
WRAPPERS = ("low_precision_params", "nonfinite_policy", "skip_spikes", "with_stats")
# Public functions that are not transforms at all.
UTILITIES = (
    "abstract_state",
    "ademamix_b3_schedule",
    "state_nbytes",
    "state_shardings",
)

# Values for required arguments, wherever a test does not choose its own.
REQUIRED: dict[str, Any] = {"learning_rate": 1e-2, "decay": 0.9}

BY_NAME: dict[str, Entry] = {entry.name: entry for entry in CATALOGUE}
DIRECTIONS = sorted(e.name for e in CATALOGUE if e.role == DIRECTION)
OPTIMIZERS = sorted(e.name for e in CATALOGUE if e.role == OPTIMIZER)
# Every transform that stores moments: the directions, then the optimizers.
ALL = DIRECTIONS + OPTIMIZERS


def entry(name: str) -> Entry:
    return BY_NAME[name]


def build(name: str, **overrides: Any) -> optax.GradientTransformation:
    """``adamx.<name>`` with its defaults, required arguments from :data:`REQUIRED`."""
    return BY_NAME[name].build(**overrides)


def build_wrapper(name: str, inner: optax.GradientTransformation | None = None):
    """A wrapper of :data:`WRAPPERS` around ``inner`` (``adamx.adam(1e-2)``)."""
    assert name in WRAPPERS, name
    return getattr(adamx, name)(adamx.adam(1e-2) if inner is None else inner)


def uncatalogued() -> list[str]:
    """Public functions of adamx that the catalogue does not account for."""
    known = {*BY_NAME, *WRAPPERS, *UTILITIES}
    return sorted(
        name
        for name in adamx.__all__
        if inspect.isfunction(getattr(adamx, name)) and name not in known
    )


# ---------------------------------------------------------------------------
# Variants: a row with a setting of its switches
# ---------------------------------------------------------------------------

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
    """One catalogued transform with a setting of its switches."""

    entry: Entry
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def id(self) -> str:
        return "-".join([self.name, *(f"{k}={v}" for k, v in self.options)])

    @property
    def alias(self) -> bool:
        """Whether it is an optimizer (its update is a parameter step)."""
        return self.entry.is_optimizer

    @property
    def family(self) -> str:
        return self.entry.family

    @property
    def parameters(self) -> dict[str, inspect.Parameter]:
        return self.entry.parameters

    @property
    def hyperparameters(self) -> dict[str, float]:
        """The :data:`TEST_HP` values the factory takes."""
        return {k: v for k, v in TEST_HP.items() if k in self.parameters}

    @property
    def default_hyperparameters(self) -> dict[str, float]:
        """What the factory uses when only its required arguments are given."""
        defaults = {
            k: p.default
            for k, p in self.parameters.items()
            if k in TEST_HP and isinstance(p.default, float)
        }
        return {**defaults, **self.entry.required}

    def settings(self, *, defaults: bool = False, **hp: Any) -> dict[str, Any]:
        """Everything the reference needs: hyperparameters and switches.

        ``defaults``: the factory's defaults rather than :data:`TEST_HP`;
        ``hp``: hyperparameters given on top of either.
        """
        base = self.default_hyperparameters if defaults else self.hyperparameters
        return {
            **SWITCHES,
            **base,
            **hp,
            **dict(self.entry.implied),
            **dict(self.options),
        }

    def build(self, **overrides: Any) -> optax.GradientTransformation:
        """Built with :data:`TEST_HP` (and ``overrides``)."""
        return self.entry.factory(
            **{**self.hyperparameters, **overrides}, **dict(self.options)
        )

    def build_default(self, **overrides: Any) -> optax.GradientTransformation:
        """Built with the factory's own defaults (and ``overrides``)."""
        return self.entry.build(**overrides, **dict(self.options))

    def reference(
        self, grads: Sequence[Any], param: Any, *, defaults: bool = False, **hp: Any
    ) -> list[np.ndarray]:
        """Float64 updates of one leaf (``param`` fixed) for ``grads``.

        ``defaults`` and ``hp`` say how the variant was built, as for
        :meth:`settings`.
        """
        return reference.family_updates(
            self.family,
            self.settings(defaults=defaults, **hp),
            grads,
            param,
            optimizer=self.alias,
        )


def _variants() -> list[Variant]:
    out = []
    for name in DIRECTIONS:
        row = BY_NAME[name]
        out.append(Variant(row))
        for p in row.parameters.values():
            if isinstance(p.default, bool):  # every switch, positional or not
                out.append(Variant(row, ((p.name, not p.default),)))
        out.extend(Variant(row, tuple(o.items())) for o in EXTRA_OPTIONS.get(name, ()))
    out.append(Variant(BY_NAME["bias_correction"]))
    out.extend(Variant(BY_NAME[name]) for name in OPTIMIZERS)
    return out


VARIANTS = _variants()


def ids(variants: Sequence[Variant]) -> list[str]:
    return [v.id for v in variants]


# ---------------------------------------------------------------------------
# Finding things in a state
# ---------------------------------------------------------------------------


def _named_tuples(state: Any):
    """Every NamedTuple inside ``state`` (optax chains are tuples), outer first.

    A ``QuantizedArray`` is a stored moment, not a state, and is not entered.
    """
    if isinstance(state, adamx.QuantizedArray):
        return
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        yield state
    if isinstance(state, (tuple, list)):
        for child in state:
            yield from _named_tuples(child)


def moments(state: Any) -> list[tuple[str, Any]]:
    """(field, tree) of every moment (a ``mu*``/``nu*`` field) in ``state``."""
    return [
        (field, getattr(node, field))
        for node in _named_tuples(state)
        for field in node._fields
        if field.startswith(("mu", "nu"))
    ]


def counts(state: Any) -> list[Any]:
    """Every ``count`` field in ``state``, outer first."""
    return [node.count for node in _named_tuples(state) if "count" in node._fields]


def count_state(state: Any) -> Any:
    """The one state with a count inside ``state``: a direction's, under a chain."""
    found = [node for node in _named_tuples(state) if "count" in node._fields]
    assert len(found) == 1, state
    return found[0]


def moment_state(state: Any) -> Any:
    """The first state inside ``state`` holding a count and moments."""
    for node in _named_tuples(state):
        fields = node._fields
        if "count" in fields and any(f.startswith(("mu", "nu")) for f in fields):
            return node
    raise AssertionError(f"no moment state in {state!r}")


def moment_view(state: Any) -> Mapping[str, Any]:
    """The count and moments of :func:`moment_state`, by field name."""
    node = moment_state(state)
    return {"count": node.count, **dict(moments(node))}
