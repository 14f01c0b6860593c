"""Sphinx extension: every public name of adamx has a reference entry.

Two jobs, both for the build with warnings as errors:

- After all pages are read, :func:`missing_public_names` lists each public
  name that no page documents: every name in ``adamx.__all__`` and, for each
  public module among them (``adamx.numerics``, ``adamx.storage``,
  ``adamx.compat``, ...), every name in that module's ``__all__``, recursively.
  A name counts as documented under its own path (``adamx.numerics.Decay``) or
  under any public path of the same object (``adamx.storage.Quantized`` is
  documented as ``adamx.Quantized``). Each missing name is a warning, so the
  build fails.
- A reference to a public object under another of its paths
  (``:func:`adamx.diagnostics.with_stats``` where the page documents
  ``adamx.with_stats``) resolves to the documented entry. A reference to
  anything that does not exist, or exists but is documented nowhere, is left
  to fail.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Iterator
from typing import Any

from sphinx.util import logging

logger = logging.getLogger(__name__)

PACKAGE = "adamx"


def public_names(package: str = PACKAGE) -> Iterator[tuple[str, Any]]:
    """Yields ``(dotted path, object)`` for every public name, modules included.

    Starts from ``package.__all__`` and descends into each public module's own
    ``__all__``.
    """
    root = importlib.import_module(package)
    seen_modules: set[str] = set()

    def walk(prefix: str, module: Any) -> Iterator[tuple[str, Any]]:
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            path = f"{prefix}.{name}"
            yield path, obj
            if inspect.ismodule(obj) and obj.__name__ not in seen_modules:
                seen_modules.add(obj.__name__)
                yield from walk(path, obj)

    yield package, root
    yield from walk(package, root)


def resolve(path: str) -> tuple[bool, Any]:
    """Imports ``path`` (``a.b.c``) as far as it goes; ``(found, object)``."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except Exception:  # any failure to import: try a shorter path
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False, None
        return True, obj
    return False, None


def missing_public_names(
    documented: Iterable[str], package: str = PACKAGE
) -> list[str]:
    """The public paths of ``package`` with no entry among ``documented``.

    ``documented`` holds the dotted names of the documented objects (the Python
    domain's objects, aliases included). A public path is covered when it is
    documented itself, or when another documented path names the same object.
    """
    documented = set(documented)
    by_object: dict[int, list[str]] = {}
    for name in documented:
        if name == package or name.startswith(package + "."):
            found, obj = resolve(name)
            if found:
                by_object.setdefault(id(obj), []).append(name)
    missing = []
    for path, obj in public_names(package):
        if path in documented:
            continue
        if inspect.ismodule(obj):
            # A module needs its own entry (its docstring, module index).
            missing.append(path)
        elif id(obj) not in by_object:
            missing.append(path)
    return missing


def _check(app: Any, env: Any) -> None:
    objects = env.get_domain("py").objects
    for path in missing_public_names(objects):
        logger.warning(
            "public name %s has no entry in the reference pages "
            "(add an autodoc directive for it)",
            path,
            type="adamx",
            subtype="public-name",
        )


def _documented_alias(env: Any, target: str, module: str | None) -> str | None:
    objects = env.get_domain("py").objects
    candidates = [target]
    if module:
        candidates.insert(0, f"{module}.{target}")
    for candidate in candidates:
        if not (candidate == PACKAGE or candidate.startswith(PACKAGE + ".")):
            continue
        found, obj = resolve(candidate)
        if not found:
            continue
        for name in sorted(objects):
            if name.startswith(PACKAGE) and name != candidate:
                ok, other = resolve(name)
                if ok and other is obj:
                    return name
    if "." not in target:
        # A bare name written in a docstring of the module that defines it
        # (``:func:`update_landing_on``` in adamx.low_precision), rendered on a
        # page whose current module is another: the one documented adamx
        # object with that name, if exactly one has it.
        matches = [
            name
            for name in objects
            if name.startswith(PACKAGE + ".") and name.rsplit(".", 1)[-1] == target
        ]
        if len(matches) == 1:
            return matches[0]
    return None


def _missing_reference(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    alias = _documented_alias(env, target, node.get("py:module"))
    if alias is None:
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(
        env,
        node["refdoc"],
        app.builder,
        node["reftype"],
        alias,
        node,
        contnode,
    )


def setup(app: Any) -> dict[str, Any]:
    """Registers the check and the reference resolver."""
    app.connect("env-check-consistency", _check)
    app.connect("missing-reference", _missing_reference)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
