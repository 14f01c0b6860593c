"""Sphinx configuration for adamx's documentation site.

Build it from the repository root with warnings as errors::

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

Nothing is fetched while building or reading the pages: MathJax comes from the
``sphinx-mathjax-offline`` package and is copied into ``_static``, and there is
no intersphinx.
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
# A checkout that has not been installed still documents its own adamx.
sys.path.insert(0, str(DOCS.parent))

import adamx  # noqa: E402

project = "adamx"
author = "the adamx authors"
copyright = "the adamx authors, Apache License 2.0"
release = adamx.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # MathJax 3.2.2, served from _static: the pages render offline.
    "sphinx-mathjax-offline",
    "myst_parser",
    # Fails the build when a public name has no reference entry, and resolves
    # references between adamx's public names and their defining modules.
    "adamx_public_names",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Every cross-reference must resolve. Names from other libraries cannot, with
# no intersphinx (the build never goes online), so they are let through by
# pattern; a broken reference to anything in adamx still fails the build.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(optax|jax|jaxlib|numpy|chex|flax|orbax|torch|keras)(\..*)?"),
]

# autodoc
autodoc_member_order = "bysource"
# The docstrings say what each argument takes; the annotations' expanded
# unions (optax.Updates, ArrayLike) would only bury the signatures.
autodoc_typehints = "none"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False
autodoc_default_options = {"show-inheritance": False}

# napoleon: Google-style docstrings (Args, Returns, Raises, References,
# Example, Attributes).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False
napoleon_attr_annotations = False

# MyST: the guides are Markdown moved from the README. No dollarmath: a "$" in
# prose stays a dollar sign; maths is written in the docstrings' rST.
myst_heading_anchors = 3

# HTML
html_theme = "furo"
html_title = f"adamx {release}"
html_static_path = ["_static"]
html_css_files = ["adamx.css"]
html_show_sourcelink = False
html_theme_options = {"navigation_with_keys": True}
