"""Which optax names adamx replaces, and the replacing.

Every name that ``adamx.__all__`` shares with optax's public namespaces is
replaced, in every loaded optax module that holds optax's object under that
name, by adamx's object of the same name, with no argument mapping. Names whose
meaning differs are left alone and reported as clashes:

- functions: both must be transformation factories (their return annotation
  names ``GradientTransformation``), and not listed in ``CLASH_REASONS``;
- state classes: both must be NamedTuples with the same fields;
- modules (``numerics``) are never replaced.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import types
from typing import Any

# optax's public namespaces whose names are matched against adamx.__all__.
PUBLIC_NAMESPACES = (
    "optax",
    "optax.contrib",
    "optax.tree",
    "optax.transforms",
    "optax.schedules",
)

# Clashes that the automatic rules below cannot see or word themselves.
CLASH_REASONS = {
    "bias_correction": (
        "optax.bias_correction(moment, decay, count) is the tree helper "
        "optax.tree.bias_correction; adamx.bias_correction(decay) is a "
        "GradientTransformation"
    ),
}

# name -> (optax object, object put in its place).
SUBSTITUTED: dict[str, tuple[Any, Any]] = {}
# name -> (optax object, adamx object), without poison or audit wrappers.
ORIGINALS: dict[str, tuple[Any, Any]] = {}
# name -> why it is not replaced.
CLASHES: dict[str, str] = {}
# "module.name" for each replacement made.
PATCHED: list[str] = []
# optax functions left in place whose code uses a replaced name, directly or
# through another (optax.contrib.muon builds alias.adamw): name -> that name.
INDIRECT: dict[str, str] = {}


def _is_transformation_factory(fn: Any) -> bool:
    try:
        annotation = inspect.signature(fn).return_annotation
    except (TypeError, ValueError):
        return False
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return "GradientTransformation" in text


def clash_reason(name: str, ours: Any, theirs: Any) -> str | None:
    """Why ``adamx.<name>`` must not replace optax's ``<name>``, or None."""
    if isinstance(ours, types.ModuleType) or isinstance(theirs, types.ModuleType):
        return "a module in both"
    if isinstance(ours, type) or isinstance(theirs, type):
        fields = getattr(ours, "_fields", None), getattr(theirs, "_fields", None)
        if fields[0] is None or fields[0] != fields[1]:
            return f"state fields differ: adamx {fields[0]}, optax {fields[1]}"
        return None
    if name in CLASH_REASONS:
        return CLASH_REASONS[name]
    if not (_is_transformation_factory(ours) and _is_transformation_factory(theirs)):
        return "not a transformation factory in both"
    return None


def find_names() -> tuple[dict[str, tuple[Any, Any]], dict[str, str]]:
    """Return ``{name: (optax object, adamx object)}`` and ``{name: clash}``."""
    import adamx

    substituted: dict[str, tuple[Any, Any]] = {}
    clashes: dict[str, str] = {}
    for namespace in PUBLIC_NAMESPACES:
        module = importlib.import_module(namespace)
        for name in adamx.__all__:
            if name not in vars(module) or name in substituted or name in clashes:
                continue
            theirs, ours = vars(module)[name], getattr(adamx, name)
            reason = clash_reason(name, ours, theirs)
            if reason is None:
                substituted[name] = (theirs, ours)
            else:
                clashes[name] = f"{namespace}.{name}: {reason}"
    return substituted, clashes


def _code_names(code: types.CodeType) -> set[str]:
    """Global and attribute names the code (and code nested in it) uses."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def find_indirect(replaced: set[str]) -> dict[str, str]:
    """Optax's public functions that reach a replaced name, and which one."""
    used: dict[str, set[str]] = {}
    for namespace in PUBLIC_NAMESPACES:
        for name, value in vars(importlib.import_module(namespace)).items():
            function = inspect.unwrap(getattr(value, "func", value))
            if isinstance(function, types.FunctionType) and name not in replaced:
                used.setdefault(name, _code_names(function.__code__))
    reached = {name: name for name in replaced}
    growing = True
    while growing:
        growing = False
        for name, names in used.items():
            hits = sorted(names & reached.keys())
            if hits and name not in reached:
                reached[name] = reached[hits[0]]
                growing = True
    return {name: via for name, via in reached.items() if name not in replaced}


def poisoned(name: str, fn: Any) -> Any:
    """``fn`` whose transformations raise in init and update.

    The factory itself still runs, so module-level tables that build optimizers
    at import (``sharding_test.OPTIMIZERS``) import, and their tests fail.
    """

    def poison(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"optax_suite poison: adamx.{name} was used")

    @functools.wraps(fn)
    def factory(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)._replace(init=poison, update=poison)

    return factory


class Audit:
    """Records the tests in which an adamx function, init or update ran."""

    def __init__(self) -> None:
        self.current: str | None = None
        self.touched: dict[str, set[str]] = {}

    def note(self, name: str) -> None:
        """Record that ``adamx.<name>`` (or what it built) ran now."""
        self.touched.setdefault(self.current or "<import>", set()).add(name)

    def wrap(self, name: str, fn: Any) -> Any:
        """``fn``, and the init and update it builds, recording their calls."""
        audit = self

        def traced(inner: Any) -> Any:
            @functools.wraps(inner)
            def call(*args: Any, **kwargs: Any) -> Any:
                audit.note(name)
                return inner(*args, **kwargs)

            return call

        @functools.wraps(fn)
        def factory(*args: Any, **kwargs: Any) -> Any:
            audit.note(name)
            result = fn(*args, **kwargs)
            if hasattr(result, "init") and hasattr(result, "_replace"):
                result = result._replace(
                    init=traced(result.init), update=traced(result.update)
                )
            return result

        return factory


AUDIT = Audit()


def substitute(poison: set[str], audit: bool) -> None:
    """Replace optax's objects by adamx's in every loaded optax module."""
    import optax.contrib  # noqa: F401  (loads the contrib modules to patch)

    substituted, clashes = find_names()
    CLASHES.update(clashes)
    ORIGINALS.update(substituted)
    for name, (theirs, ours) in substituted.items():
        replacement = ours
        if callable(ours) and not isinstance(ours, type):
            if "all" in poison or name in poison:
                replacement = poisoned(name, ours)
            elif audit:
                replacement = AUDIT.wrap(name, ours)
        SUBSTITUTED[name] = (theirs, replacement)
    INDIRECT.update(find_indirect(set(substituted)))
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith("optax") or module_name.endswith("_test"):
            continue
        namespace = vars(module)
        for name, (theirs, replacement) in SUBSTITUTED.items():
            if namespace.get(name) is theirs:
                setattr(module, name, replacement)
                PATCHED.append(f"{module_name}.{name}")
