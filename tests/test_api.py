"""The public API: explicit, documented, typed."""

import inspect
import pathlib

import optax
import pytest
from catalogue import BY_NAME, OPTIMIZERS, WRAPPERS, build, build_wrapper

import adamx

# Every catalogued transform and wrapper (test_catalogue checks that these
# are all of adamx's public transforms).
TRANSFORMS = [name for name in adamx.__all__ if name in BY_NAME or name in WRAPPERS]


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
    tx = build_wrapper(name) if name in WRAPPERS else build(name)
    assert isinstance(tx, optax.GradientTransformation)


def _optax_twin(name: str):
    """optax's function of the same name (optax or optax.contrib), or None."""
    if name == "bias_correction":  # optax's is a helper, adamx's a transform
        return None
    return getattr(optax, name, None) or getattr(optax.contrib, name, None)


OPTAX_TWINS = [name for name in TRANSFORMS if _optax_twin(name) is not None]


def test_every_optax_alias_and_scale_by_adamx_has_is_compared():
    expected = {"adam", "adamw", "nadam", "nadamw", "amsgrad", "adabelief", "radam"}
    expected |= {"yogi", "adamax", "adamaxw", "lamb", "adopt", "ademamix"}
    expected |= {"scale_by_" + n for n in ("adam", "amsgrad", "belief", "radam")}
    expected |= {"scale_by_" + n for n in ("yogi", "adamax", "adopt", "ademamix")}
    assert expected <= set(OPTAX_TWINS)


@pytest.mark.parametrize("name", OPTAX_TWINS)
def test_signature_is_optax_s_then_keyword_only_options(name):
    """optax's parameters by name, position, kind and default; adamx's after.

    A call pasted from optax 0.2.8, positional or by keyword, means the same.
    """
    ours = inspect.signature(getattr(adamx, name)).parameters
    theirs = inspect.signature(_optax_twin(name)).parameters
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert [n for n, p in ours.items() if p.kind is positional] == [
        n for n, p in theirs.items() if p.kind is positional
    ]
    for parameter in theirs.values():
        mine = ours[parameter.name]
        assert mine.kind is parameter.kind, parameter.name
        no_default = parameter.default is inspect.Parameter.empty
        if callable(parameter.default) and not no_default:  # adopt's clip bound
            steps = (0, 1, 7, 100)
            assert [mine.default(t) for t in steps] == [
                parameter.default(t) for t in steps
            ]
        else:
            assert mine.default == parameter.default, parameter.name
    for extra in ours.keys() - theirs.keys():
        assert ours[extra].kind is inspect.Parameter.KEYWORD_ONLY, extra


@pytest.mark.parametrize("name", TRANSFORMS)
def test_options_beyond_optax_are_keyword_only(name):
    parameters = inspect.signature(getattr(adamx, name)).parameters
    for option in ("nu_dtype", "epsilon_hat", "max_of"):
        if option in parameters:
            assert parameters[option].kind is inspect.Parameter.KEYWORD_ONLY


def test_package_is_typed():
    assert (pathlib.Path(adamx.__file__).parent / "py.typed").is_file()


@pytest.mark.parametrize(
    "name", [n for n in adamx.numerics.__all__ if n not in ("compute_dtype",)]
)
def test_numerics_functions_are_documented_with_maths(name):
    doc = inspect.getdoc(getattr(adamx.numerics, name))
    assert doc and ("math" in doc or "float32" in doc)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_learning_rate_is_annotated_with_optax_s_type_itself(name):
    # Tools that read signatures (optax's own test helpers) compare the
    # annotation with optax.ScalarOrSchedule, not with a string.
    parameter = inspect.signature(getattr(adamx, name)).parameters["learning_rate"]
    assert parameter.annotation is optax.ScalarOrSchedule
