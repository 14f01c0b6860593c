"""Where the adamx repository checkout is, for the tests that read it.

Most of the suite needs only an importable adamx and the files in ``tests/``,
so it runs as well against an installed wheel, from a folder holding nothing
but a copy of ``tests/``. A few tests need the checkout itself: the examples,
README.md, the notebook, ruff's configuration in pyproject.toml. They ask for
each file when they run, never at import::

    path = checkout.require("examples/benchmark.py")

which returns the file's path, or skips the test with a reason that names the
missing path. The checkout is ``$ADAMX_CHECKOUT`` when that is set, otherwise
the nearest folder above this file that holds a pyproject.toml naming the
project ``adamx`` and an ``examples/`` folder.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re

import pytest

ENV = "ADAMX_CHECKOUT"
_NAME = re.compile(r'^\s*name\s*=\s*"adamx"\s*$', re.M)


def _is_checkout(folder: pathlib.Path) -> bool:
    pyproject = folder / "pyproject.toml"
    return (
        pyproject.is_file()
        and (folder / "examples").is_dir()
        and _NAME.search(pyproject.read_text(encoding="utf-8")) is not None
    )


@functools.cache
def root() -> pathlib.Path | None:
    """The checkout's root folder, or None when these tests are not in one."""
    if os.environ.get(ENV):
        return pathlib.Path(os.environ[ENV]).resolve()
    here = pathlib.Path(__file__).resolve().parent
    return next((p for p in here.parents if _is_checkout(p)), None)


def find(relative: str) -> pathlib.Path | None:
    """``relative`` (a path inside the checkout) if it exists, else None."""
    base = root()
    if base is None or not (base / relative).exists():
        return None
    return base / relative


def missing(relative: str) -> str:
    """Why ``relative`` cannot be found: the skip reason of :func:`require`."""
    base = root()
    if base is None:
        where = (
            f"no adamx checkout above {pathlib.Path(__file__).resolve().parent} "
            f"(set {ENV} to one)"
        )
    elif os.environ.get(ENV):
        where = f"not in {ENV}={os.environ[ENV]}"
    else:
        where = f"not in the checkout {base}"
    return f"needs the repository checkout: {relative} is missing ({where})"


def require(relative: str) -> pathlib.Path:
    """The path of ``relative`` in the checkout; skips the test if it is not there."""
    path = find(relative)
    if path is None:
        pytest.skip(missing(relative))
    return path
