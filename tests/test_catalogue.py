"""The catalogue (tests/catalogue.py) accounts for the whole public API.

Every table-driven test takes its transforms from the catalogue, so a public
transform without a row would go untested without anyone noticing; the first
test below fails instead, naming it. The others check that what a row says
(its role, its moments, its switches) is what the library does.
"""

from __future__ import annotations

import inspect

import jax.numpy as jnp
import pytest
from catalogue import (
    BIAS,
    BY_NAME,
    CATALOGUE,
    DIRECTION,
    OPTIMIZER,
    UTILITIES,
    VARIANTS,
    WRAPPERS,
    Variant,
    build_wrapper,
    counts,
    moment_state,
    moments,
    uncatalogued,
)

import adamx


def _returns_transformation(name: str) -> bool:
    annotation = inspect.signature(getattr(adamx, name)).return_annotation
    return "GradientTransformation" in str(annotation)


def test_every_public_transform_is_catalogued():
    missing = uncatalogued()
    assert not missing, (
        f"public adamx function(s) {missing} have no row in tests/catalogue.py, "
        "so no table-driven test runs them: add an Entry(name, family, role, ...) "
        "to CATALOGUE, or the name to WRAPPERS or UTILITIES if it is not an "
        "Adam-family transform"
    )


def test_every_row_names_a_public_function():
    listed = [e.name for e in CATALOGUE] + [*WRAPPERS, *UTILITIES]
    assert len(listed) == len(set(listed)), "a name is listed twice"
    stale = sorted(set(listed) - set(adamx.__all__))
    assert not stale, f"tests/catalogue.py lists {stale}, which adamx does not export"


def test_utilities_are_not_transforms_and_wrappers_are():
    misfiled = [name for name in UTILITIES if _returns_transformation(name)]
    assert not misfiled, f"{misfiled} return transformations: give them rows"
    for name in WRAPPERS:
        assert "inner" in inspect.signature(getattr(adamx, name)).parameters, name
        assert _returns_transformation(name), name
        build_wrapper(name)


@pytest.mark.parametrize("entry", CATALOGUE, ids=lambda e: e.name)
def test_row_agrees_with_the_signature(entry):
    assert _returns_transformation(entry.name)
    if entry.role == DIRECTION:
        assert entry.name.startswith("scale_by_")
    takes_rate = "learning_rate" in entry.parameters
    assert takes_rate == (entry.role == OPTIMIZER), entry.name
    assert entry.role in (DIRECTION, OPTIMIZER, BIAS)
    assert entry.takes_storage == (entry.moments != ()), entry.name
    for switch, value in entry.implied:
        assert entry.parameters[switch].default == value, (entry.name, switch)
    # An optimizer's family is that of a direction of the same family.
    directions = {e.family for e in CATALOGUE if e.role == DIRECTION}
    assert entry.family in directions or entry.role == BIAS


@pytest.mark.parametrize("entry", CATALOGUE, ids=lambda e: e.name)
def test_declared_moments_are_found_in_the_state(entry):
    params = {"w": jnp.zeros((2, 3)), "s": jnp.zeros(())}
    state = entry.build().init(params)
    found = moments(state)
    assert tuple(field for field, _ in found) == entry.moments
    for field, tree in found:
        assert set(tree) == set(params), field
    assert len(counts(state)) == 1
    if entry.moments:
        assert moment_state(state)._fields == ("count", *entry.moments)


def test_variants_flip_every_switch_of_every_direction():
    assert {v.name for v in VARIANTS} == set(BY_NAME)
    for entry in CATALOGUE:
        if entry.role != DIRECTION:
            continue
        for p in entry.parameters.values():
            if isinstance(p.default, bool):
                assert Variant(entry, ((p.name, not p.default),)) in VARIANTS
    assert len({v.id for v in VARIANTS}) == len(VARIANTS)
