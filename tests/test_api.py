"""The public API: explicit, documented, typed."""

import inspect
import pathlib

import optax
import pytest

import adamx

TRANSFORMS = [
    name
    for name in adamx.__all__
    if callable(getattr(adamx, name))
    and name[0].islower()
    and name
    not in ("abstract_state", "ademamix_b3_schedule", "state_nbytes", "state_shardings")
]


def test_all_lists_exactly_the_public_names():
    public = {
        name
        for name, value in vars(adamx).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public <= set(adamx.__all__)
    assert all(hasattr(adamx, name) for name in adamx.__all__)
    assert sorted(adamx.__all__) == adamx.__all__


@pytest.mark.parametrize("name", adamx.__all__)
def test_every_public_name_has_a_docstring(name):
    doc = inspect.getdoc(getattr(adamx, name))
    assert doc and len(doc.split()) >= 8, f"adamx.{name} needs a real docstring"


@pytest.mark.parametrize("name", [n for n in TRANSFORMS if n.startswith("scale_by")])
def test_scale_by_docstrings_carry_equations_and_references(name):
    doc = inspect.getdoc(getattr(adamx, name))
    assert ".. math::" in doc
    assert "References:" in doc and "https://" in doc
    for argument in inspect.signature(getattr(adamx, name)).parameters:
        assert f"{argument}:" in doc, f"{name} does not document {argument}"


@pytest.mark.parametrize("name", TRANSFORMS)
def test_transforms_return_optax_transformations(name):
    factory = getattr(adamx, name)
    args = (0.9,) if name == "bias_correction" else ()
    parameters = inspect.signature(factory).parameters
    args = (1e-3,) if "learning_rate" in parameters else args
    args = (adamx.adam(1e-3),) if "inner" in parameters else args
    assert isinstance(factory(*args), optax.GradientTransformation)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_behaviour_switches_are_keyword_only(name):
    parameters = inspect.signature(getattr(adamx, name)).parameters
    for switch in ("mu_dtype", "nu_dtype", "nesterov", "bias_correction"):
        if switch in parameters:
            assert parameters[switch].kind is inspect.Parameter.KEYWORD_ONLY


def test_package_is_typed():
    assert (pathlib.Path(adamx.__file__).parent / "py.typed").is_file()


@pytest.mark.parametrize(
    "name", [n for n in adamx.numerics.__all__ if n not in ("compute_dtype",)]
)
def test_numerics_functions_are_documented_with_maths(name):
    doc = inspect.getdoc(getattr(adamx.numerics, name))
    assert doc and ("math" in doc or "float32" in doc)
