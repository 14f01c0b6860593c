"""Strict settings for every run of the suite, in the checkout or not.

pyproject.toml's ``[tool.pytest.ini_options]`` holds the same settings, but a
copy of ``tests/`` run next to an installed wheel has no pyproject.toml, so
``pytest_configure`` below adds whatever is missing: warnings are errors, an
xfail that passes fails, doctests run with the project's option flags, and
the ``slow`` marker is known. Implicit rank promotion raises everywhere.
"""

import collections
import os

import background
import hypothesis
import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

hypothesis.settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=True, print_blob=True
)
hypothesis.settings.register_profile("thorough", max_examples=1000, deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The same as pyproject.toml's [tool.pytest.ini_options] (test_lint checks it).
FILTERWARNINGS = ["error"]
DOCTEST_OPTIONFLAGS = ["NORMALIZE_WHITESPACE", "ELLIPSIS", "NUMBER"]
XFAIL_STRICT = True
MARKERS = [
    "slow: not in the quick subset, pytest -m 'not slow' (README, Development)",
]


def pytest_configure(config: pytest.Config) -> None:
    for line in FILTERWARNINGS:
        if line not in config.getini("filterwarnings"):
            config.addinivalue_line("filterwarnings", line)
    for flag in DOCTEST_OPTIONFLAGS:
        if flag not in config.getini("doctest_optionflags"):
            config.addinivalue_line("doctest_optionflags", flag)
    for line in MARKERS:
        if line not in config.getini("markers"):
            config.addinivalue_line("markers", line)
    # --doctest-modules: the docstrings of every module collected, adamx's
    # included when it is on the command line (``--pyargs adamx``).
    if hasattr(config.option, "doctestmodules"):  # unless -p no:doctest
        config.option.doctestmodules = True


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session):
    # The child processes that the selected tests wait for start now, beside
    # the suite (background.py); whatever still runs at the end is killed.
    if not session.config.option.collectonly:
        background.start(session.items)
    try:
        return (yield)
    finally:
        background.stop()


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    if XFAIL_STRICT:
        _strict_xfail(items)
    _mark_all_but_one_row_slow(items)


def _strict_xfail(items: list[pytest.Item]) -> None:
    """What xfail_strict does, with or without a configuration file.

    An xfail marker that does not say ``strict=`` gets a strict copy put
    before it, which pytest reads first.
    """
    for item in items:
        for mark in list(item.iter_markers("xfail")):
            if "strict" not in mark.kwargs:
                strict = pytest.mark.xfail(*mark.args, **mark.kwargs, strict=True)
                item.add_marker(strict, append=False)


def _mark_all_but_one_row_slow(items: list[pytest.Item]) -> None:
    """The quick subset, ``pytest -m "not slow"``: one row of every table.

    Of the parametrizations of each test function not marked slow, all but
    the first are marked slow. Tables list their plainest case first (adam,
    float32), which is also the quickest.
    """
    tables = collections.defaultdict(list)
    for item in items:
        if hasattr(item, "callspec") and item.get_closest_marker("slow") is None:
            tables[(item.module.__name__, item.cls, item.originalname)].append(item)
    for rows in tables.values():
        for item in rows[1:]:
            item.add_marker(pytest.mark.slow)
