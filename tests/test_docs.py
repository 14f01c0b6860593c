"""The documentation site builds, with warnings as errors, and its maths renders.

The build is the one the README names, ``sphinx-build -W --keep-going -b html
docs docs/_build/html``, run in a fresh interpreter into a temporary folder.
With warnings as errors and nitpicky references it fails on a docstring's rST
error, a broken cross-reference and (through ``docs/_ext/adamx_public_names.py``)
a public name with no reference entry; a small project built with the same
configuration shows that the last two do fail it. Headless Chromium then loads
built pages and ``docs/check_rendered.py`` checks that MathJax typeset every
formula.

Each test skips with a reason naming what is missing: the checkout's ``docs/``
(the suite also runs from an installed wheel with only ``tests/`` copied), the
``docs`` extra (``pip install -e ".[docs]"``), or Chromium.
"""

import importlib
import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

# import name -> the package that provides it (the docs extra).
DOCS_EXTRA = {
    "sphinx": "sphinx",
    "myst_parser": "myst-parser",
    "furo": "furo",
    "sphinx-mathjax-offline": "sphinx-mathjax-offline",
}
BUILD_TIMEOUT_S = 300
# Pages whose maths Chromium checks: a family (display and inline maths,
# references), a module page and the smallest family.
RENDERED_PAGES = [
    "families/adam.html",
    "api/numerics.html",
    "families/bias_correction.html",
]


def _docs_dir() -> pathlib.Path | None:
    """The checkout's docs/ folder: under $ADAMX_CHECKOUT, or above this file."""
    if os.environ.get("ADAMX_CHECKOUT"):
        roots = [pathlib.Path(os.environ["ADAMX_CHECKOUT"])]
    else:
        roots = list(pathlib.Path(__file__).resolve().parents)
    for root in roots:
        if (root / "docs" / "_ext" / "adamx_public_names.py").is_file():
            return root / "docs"
    return None


def require_docs() -> pathlib.Path:
    """docs/, or a skip naming what is missing to build it."""
    docs = _docs_dir()
    if docs is None:
        pytest.skip(
            "docs/ not found (docs/conf.py and docs/_ext/): these tests need the "
            "adamx checkout; set ADAMX_CHECKOUT to run them from elsewhere"
        )
    missing = [
        package
        for module, package in DOCS_EXTRA.items()
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        pytest.skip(
            f"the docs extra is not installed (no {', '.join(missing)}): "
            'pip install -e ".[docs]"'
        )
    return docs


def sphinx_build(
    source: pathlib.Path, out: pathlib.Path, builder: str = "html"
) -> subprocess.CompletedProcess:
    """``sphinx-build -W --keep-going`` in a fresh interpreter."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            builder,
            "-d",
            str(out / ".doctrees"),
            str(source),
            str(out / builder),
        ],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    """The site built once for this module: (docs/, the html folder)."""
    docs = require_docs()
    out = tmp_path_factory.mktemp("docs")
    result = sphinx_build(docs, out)
    assert result.returncode == 0, (
        "sphinx-build -W --keep-going -b html docs docs/_build/html failed:\n"
        + result.stderr[-6000:]
    )
    return docs, out / "html"


@pytest.mark.slow
def test_site_builds_with_warnings_as_errors(built_site):
    _, html = built_site
    for page in ["index.html", "api/index.html", *RENDERED_PAGES]:
        assert (html / page).is_file(), page
    # MathJax is served from the build itself, so the pages render offline.
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    adam = (html / "families" / "adam.html").read_text(encoding="utf-8")
    assert 'id="adamx.scale_by_adam"' in adam
    assert 'src="../_static/mathjax/tex-chtml.js' in adam


def _load_extension(docs: pathlib.Path):
    sys.path.insert(0, str(docs / "_ext"))
    try:
        return importlib.import_module("adamx_public_names")
    finally:
        sys.path.remove(str(docs / "_ext"))


def test_public_name_check_finds_what_is_missing():
    ext = _load_extension(require_docs())
    public = dict(ext.public_names())
    # adamx.__all__, and the public modules' own names, recursively.
    assert {"adamx.adam", "adamx.numerics", "adamx.numerics.Decay"} <= set(public)
    assert {"adamx.compat.torch", "adamx.compat.torch.adamw"} <= set(public)
    assert "adamx.storage.Quantized" in public
    documented = set(public)
    assert ext.missing_public_names(documented) == []
    # A re-exported object counts once documented under either path...
    assert ext.missing_public_names(documented - {"adamx.storage.Quantized"}) == []
    # ...but not when neither path is documented, and a module needs its own.
    gone = {"adamx.Quantized", "adamx.storage.Quantized", "adamx.numerics"}
    assert ext.missing_public_names(documented - gone) == [
        "adamx.Quantized",
        "adamx.numerics",
        "adamx.storage.Quantized",
    ]


@pytest.mark.slow
def test_missing_name_and_broken_reference_fail_the_build(tmp_path):
    docs = require_docs()
    source = tmp_path / "src"
    source.mkdir()
    # The site's own configuration, on a one-page project.
    (source / "conf.py").write_text(
        textwrap.dedent(
            f"""
            import runpy
            globals().update(
                (k, v)
                for k, v in runpy.run_path({str(docs / "conf.py")!r}).items()
                if not k.startswith("__")
            )
            html_static_path = []
            html_css_files = []
            """
        )
    )
    (source / "index.rst").write_text(
        textwrap.dedent(
            """
            One page
            ========

            .. autofunction:: adamx.adam

            See :func:`adamx.no_such_function`, and :func:`adamx.adam`.
            """
        )
    )
    result = sphinx_build(source, tmp_path / "out", builder="dummy")
    assert result.returncode != 0, result.stderr
    assert "public name adamx.adamw has no entry" in result.stderr
    assert "public name adamx.numerics has no entry" in result.stderr
    assert "reference target not found: adamx.no_such_function" in result.stderr
    # The documented name's reference resolves.
    assert "not found: adamx.adam [" not in result.stderr


@pytest.mark.slow
def test_maths_renders_in_headless_chromium(built_site):
    docs, html = built_site
    sys.path.insert(0, str(docs))
    try:
        check_rendered = importlib.import_module("check_rendered")
    finally:
        sys.path.remove(str(docs))
    if check_rendered.find_chromium() is None:
        pytest.skip(
            "Chromium not found (Debian: apt-get install chromium; or set "
            "CHROMIUM): the rendered maths is not checked"
        )
    chromium = check_rendered.find_chromium()
    for page in RENDERED_PAGES:
        result = check_rendered.check_page(chromium, html, page)
        assert result.ok, (page, result.problems)
        assert result.rendered == result.expected > 0, page
