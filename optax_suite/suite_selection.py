"""Which of optax's tests exercise a name that adamx replaces.

A test is kept when its parameters (names such as ``'adam'``, adamx objects,
transformations adamx built), its code (``alias.adam``, ``'yogi'``), or the
module-level helpers and tables it uses name a substituted name, or an optax
function that uses one (``muon``, ``galore``, ``optimistic_adam``).
``--optax-audit`` checks this against the tests that really call adamx.
"""

from __future__ import annotations

import functools
import pathlib
import re
import sys
import types
from typing import Any

import pytest
from suite_substitution import INDIRECT, SUBSTITUTED


def _names() -> list[str]:
    return sorted({*SUBSTITUTED, *INDIRECT}, key=len, reverse=True)


def _word(name: str) -> str:
    return rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])"


def optax_test_modules() -> list[str]:
    """Dotted names of all of optax's test modules.

    All of them: a module may use another's table without naming anything
    (``_schedule_test`` runs ``alias_test._OPTIMIZERS_UNDER_TEST``), and
    importing them all costs a few seconds.
    """
    import optax

    root = pathlib.Path(optax.__file__).parent
    return [
        ".".join(path.relative_to(root.parent).with_suffix("").parts)
        for path in sorted(root.rglob("*_test.py"))
    ]


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def contains_adamx(obj: Any, depth: int = 0) -> bool:
    """Whether ``obj`` is, holds, names or closes over a substituted object."""
    if depth > 6 or isinstance(obj, (int, float, complex, bool, type(None))):
        return False
    if isinstance(obj, str):
        return any(re.search(_word(n), obj) for n in _names())
    if any(obj is replacement for _, replacement in SUBSTITUTED.values()):
        return True
    if isinstance(obj, functools.partial):
        return contains_adamx((obj.func, obj.args, obj.keywords), depth + 1)
    if isinstance(obj, types.FunctionType):
        if (obj.__module__ or "").startswith("adamx"):
            return True
        cells = [c.cell_contents for c in obj.__closure__ or () if _filled(c)]
        return any(contains_adamx(c, depth + 1) for c in cells)
    if isinstance(obj, dict):
        return any(contains_adamx(v, depth + 1) for v in obj.items())
    if isinstance(obj, (tuple, list, set, frozenset)):
        return any(contains_adamx(v, depth + 1) for v in obj)
    return False


def _test_params(function: Any) -> Any:
    """The parameters absl's parameterized bound to a generated test method."""
    cells = zip(function.__closure__ or (), function.__code__.co_freevars, strict=True)
    for cell, name in cells:
        if name == "testcase_params" and _filled(cell):
            return cell.cell_contents
    return None


def _unwrap(function: Any) -> Any:
    """The test as written, under absl's and functools' wrappers."""
    while True:
        inner = getattr(function, "__wrapped__", None)
        inner = getattr(function, "_test_method", inner)  # _ParameterizedTestIter
        if inner is None:
            return function
        function = inner


def _code_names(code: types.CodeType) -> set[str]:
    """Global and attribute names the code (and code nested in it) uses.

    Not its strings: ``test_optimization`` lists ``'optimistic_adam'`` among
    the optimizers it skips for complex dtypes, for every parameter alike.
    """
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def exercises_substituted_name(item: pytest.Item) -> bool:
    """Whether the optax test ``item`` reaches a substituted name.

    Through its parameters (``opt_name='adam'``), the names its code uses
    (``alias.adam``) or the module-level helpers it calls use, two calls deep,
    or the module-level tables it reads.
    """
    method = getattr(item, "obj", None)
    function = getattr(method, "__func__", method)
    if not isinstance(function, types.FunctionType):
        return True
    if contains_adamx(_test_params(function)):
        return True
    names = set(_names())
    test = _unwrap(function)
    if _code_names(test.__code__) & names:
        return True
    module = sys.modules.get(test.__module__)
    scope = dict(vars(module)) if module else {}
    cls = getattr(item, "cls", None)
    frontier, seen = [test], set()
    for _ in range(3):  # the test, its helpers, their helpers
        used = set().union(*(_code_names(f.__code__) for f in frontier))
        frontier = []
        for name in used - seen:
            seen.add(name)
            value = scope.get(name, getattr(cls, name, None) if cls else None)
            if isinstance(value, types.FunctionType):
                if _code_names(value.__code__) & names:
                    return True
                frontier.append(value)
            elif not isinstance(value, (type, types.ModuleType)) and contains_adamx(
                value
            ):
                return True
    return False
