"""Run optax's own installed tests with adamx's functions put in by name.

Run it (it is outside ``testpaths``, so a plain ``pytest`` never loads it)::

    pytest optax_suite -q

``suite_substitution.py`` replaces, in optax's modules, every name adamx shares
with optax (``optax.adam``, ``optax.contrib.adopt``, ...) by adamx's function
of that name, with no argument mapping, in ``pytest_configure``: before optax's
test modules are imported, so tables built at import
(``sharding_test.OPTIMIZERS``) and lookups at call time
(``getattr(alias, opt_name)``) both get adamx. ``test_optax.py`` stands for
optax's test modules, imported by name from site-packages;
``suite_selection.py`` keeps the tests that exercise a substituted name;
``suite_differences.py`` lists the failures that are deliberate differences of
adamx (reported as xfailed; strict: one that stops failing fails the run).
``test_signatures.py`` compares each function's parameters with optax's.

Options:

- ``--optax-all``: keep every test of optax's test files;
- ``--optax-poison=adam,scale_by_adam`` (or ``all``): the transformations the
  named adamx functions return raise in init and update, to check that the
  substitution reaches the tests;
- ``--optax-audit=FILE``: run every test of optax's test files, record which
  ones call adamx code (through wrappers, so for selection checks only) and
  write them, with the selection's verdicts, to FILE as JSON;
- ``--optax-no-differences``: report the listed differences as failures.

The header of each run lists the substituted names and the clashes.
"""

from __future__ import annotations

import os

# optax's sharding_test sets this at import, too late once another test module
# has started the backend; set it before anything imports jax.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import importlib
import json
import pathlib
import re
import types
import warnings
from typing import Any

import pytest
import suite_differences
import suite_selection
import suite_substitution as sub

EXPECTED = pytest.StashKey[suite_differences.Difference]()
SEEN = pytest.StashKey[bool]()
IN_CALL = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """The ``--optax-*`` options of the module docstring."""
    group = parser.getgroup("optax_suite", "optax's tests with adamx substituted")
    group.addoption("--optax-all", action="store_true", help="keep every test")
    group.addoption("--optax-poison", default="", help="names that raise, or all")
    group.addoption("--optax-audit", default="", help="write touched tests here")
    group.addoption(
        "--optax-no-differences",
        action="store_true",
        help="report the differences in suite_differences.py as failures",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Substitute before any optax test module is imported."""
    poison = {n for n in config.getoption("--optax-poison").split(",") if n}
    sub.substitute(poison, audit=bool(config.getoption("--optax-audit")))
    unknown = poison - set(sub.SUBSTITUTED) - {"all"}
    if unknown:
        raise pytest.UsageError(f"--optax-poison: not substituted: {sorted(unknown)}")


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The substituted names and the clashes."""
    names = ", ".join(sorted(sub.SUBSTITUTED))
    lines = [f"optax_suite: adamx replaces in {len(sub.PATCHED)} places: {names}"]
    lines += [f"optax_suite: not replaced, {why}" for why in sub.CLASHES.values()]
    uses = ", ".join(f"{n} ({via})" for n, via in sorted(sub.INDIRECT.items()))
    lines.append(f"optax_suite: optax functions that use them, also selected: {uses}")
    return lines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``substituted_name``: each substituted function (not state class)."""
    if "substituted_name" in metafunc.fixturenames:
        names = [n for n, (t, _) in sub.ORIGINALS.items() if not isinstance(t, type)]
        metafunc.parametrize("substituted_name", sorted(names))


@pytest.fixture
def optax_and_adamx(substituted_name: str) -> tuple[Any, Any]:
    """Optax's and adamx's object of the same name."""
    return sub.ORIGINALS[substituted_name]


class OptaxTestModule(pytest.Module):
    """One of optax's test modules, imported by its dotted name."""

    def _getobj(self) -> types.ModuleType:
        # Under optax's own warning settings, not adamx's filterwarnings=error.
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return importlib.import_module(self.name)


class OptaxSuite(pytest.Module):
    """``test_optax.py``: stands for the optax test modules it collects."""

    def collect(self) -> list[pytest.Collector]:
        """One collector per optax test module, imported by its dotted name."""
        return [
            OptaxTestModule.from_parent(
                self, path=self.path, name=name, nodeid=f"{self.nodeid}::{name}"
            )
            for name in suite_selection.optax_test_modules()
        ]


def pytest_pycollect_makemodule(
    module_path: pathlib.Path, parent: pytest.Collector
) -> pytest.Module | None:
    """Put the optax suite in place of ``test_optax.py``."""
    if module_path.name == "test_optax.py":
        return OptaxSuite.from_parent(parent, path=module_path)
    return None


def _in_suite(item: pytest.Item) -> bool:
    return any(isinstance(node, OptaxTestModule) for node in item.listchain())


def _optax_id(item: pytest.Item) -> str:
    """``optax._src.alias_test::AliasTest::test_adam``: the id inside the suite."""
    return item.nodeid.split("test_optax.py::", 1)[-1]


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Keep the tests that exercise a substituted name; mark known differences."""
    everything = config.getoption("--optax-all") or config.getoption("--optax-audit")
    use_differences = not config.getoption("--optax-no-differences")
    keep, drop = [], []
    for item in items:
        if not _in_suite(item):
            keep.append(item)
            continue
        if not (everything or suite_selection.exercises_substituted_name(item)):
            drop.append(item)
            continue
        keep.append(item)
        # optax runs its tests with warnings as warnings, not errors.
        item.add_marker(pytest.mark.filterwarnings("default"))
        difference = suite_differences.find(_optax_id(item))
        if difference and use_differences:
            item.stash[EXPECTED] = difference
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """Attribute adamx calls to the running test (``--optax-audit``)."""
    sub.AUDIT.current = item.nodeid
    item.stash[IN_CALL] = True
    try:
        return (yield)
    finally:
        sub.AUDIT.current = None
        item.stash[IN_CALL] = False


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """A listed difference that fails as listed is xfailed; one that passes fails.

    Subtests report through here too, during the call; the test's own report
    comes after it.
    """
    report = yield
    difference = item.stash.get(EXPECTED, None)
    if difference is None or report.when != "call":
        return report
    if report.failed and re.search(difference.match, str(report.longrepr)):
        report.outcome = "skipped"
        report.wasxfail = f"adamx differs from optax: {difference.row}"
        item.stash[SEEN] = True
    elif (
        report.passed
        and not item.stash.get(IN_CALL, False)
        and not item.stash.get(SEEN, False)
    ):
        report.outcome = "failed"
        report.longrepr = (
            f"listed difference {difference.row!r} did not occur: "
            "remove the test from optax_suite/suite_differences.py"
        )
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the audit: which tests ran adamx code, which were selected."""
    target = session.config.getoption("--optax-audit")
    if target:
        selected = {
            item.nodeid: suite_selection.exercises_substituted_name(item)
            for item in session.items
            if _in_suite(item)
        }
        touched = sub.AUDIT.touched
        report = {
            "touched": {k: sorted(v) for k, v in sorted(touched.items())},
            "selected": selected,
        }
        pathlib.Path(target).write_text(json.dumps(report, indent=1))
