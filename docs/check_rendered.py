r"""Checks, in headless Chromium, that MathJax typeset the built pages' maths.

Usage, after building the site (``sphinx-build -W --keep-going -b html docs
docs/_build/html``)::

    python docs/check_rendered.py                      # every page with maths
    python docs/check_rendered.py docs/_build/html --pages families/adam.html
    python docs/check_rendered.py --screenshot /tmp/adam.png --pages families/adam.html

For each page it counts the formulas Sphinx wrote (elements of class ``math``:
one per ``:math:`` role and per ``.. math::`` block), loads the page from disk
in headless Chromium with no network, lets MathJax run, and reads back the
DOM. A page passes when every formula holds exactly one rendered
``mjx-container`` with glyphs in it, no formula still holds raw TeX (``\(``,
``\[``, ``$$``), MathJax reported no TeX error (``mjx-merror``) and drew no
undefined macro (red text), and MathJax
was loaded from the build itself, not from a CDN. It exits with status 1 when a
page fails and 2 when Chromium cannot be found.

Chromium is ``$CHROMIUM`` or the first of ``chromium``, ``chromium-browser``
and ``google-chrome`` on the PATH (Debian's package ``chromium``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

DEFAULT_BUILD = Path(__file__).resolve().parent / "_build" / "html"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# The flags Chromium needs as root on a machine with no network and no screen;
# background networking off, or it tries to reach its services at every start.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
RAW_TEX = ("\\(", "\\[", "$$")


def find_chromium() -> str | None:
    """The Chromium to run, or None."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _is_math(tag: str, attrs: dict[str, str | None]) -> bool:
    classes = (attrs.get("class") or "").split()
    return tag in ("span", "div") and "math" in classes


class _Source(HTMLParser):
    """Counts the formulas Sphinx wrote, and where MathJax is loaded from."""

    def __init__(self) -> None:
        super().__init__()
        self.formulas = 0
        self.mathjax_src: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if _is_math(tag, attrs):
            self.formulas += 1
        src = attrs.get("src") or ""
        if tag == "script" and "mathjax" in src.lower():
            self.mathjax_src.append(src)


class _Rendered(HTMLParser):
    """Reads the DOM after MathJax ran: each formula's containers and leftovers."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.formulas: list[dict] = []  # per formula: containers, glyphs, raw
        self.in_formula: int | None = None  # stack depth of the open formula
        self.in_container = 0
        self.errors = 0
        self.containers_outside = 0
        # TeX MathJax could not read: an undefined macro is drawn as red text
        # (its noundefined extension), its characters as mjx-c glyph classes.
        self.undefined: list[str] = []
        self.in_undefined = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.stack.append(tag)
        if self.in_formula is None and _is_math(tag, attrs):
            self.in_formula = len(self.stack)
            self.formulas.append({"containers": 0, "glyphs": 0, "raw": ""})
            return
        if tag == "mjx-container":
            self.in_container += 1
            if self.in_formula is None:
                self.containers_outside += 1
            elif self.in_container == 1:
                self.formulas[-1]["containers"] += 1
        elif tag == "mjx-c" and self.in_formula is not None:
            self.formulas[-1]["glyphs"] += 1
            if self.in_undefined:
                self.undefined[-1] += _glyph(attrs.get("class") or "")
        elif tag == "mjx-merror":
            self.errors += 1
        elif tag == "mjx-mtext" and "color: red" in (attrs.get("style") or ""):
            self.in_undefined += 1
            self.undefined.append("")

    def handle_endtag(self, tag):
        # The DOM Chromium serializes is well formed: pop to the matching tag.
        while self.stack:
            top = self.stack.pop()
            if top == "mjx-container":
                self.in_container -= 1
            if top == "mjx-mtext" and self.in_undefined:
                self.in_undefined -= 1
            if self.in_formula is not None and len(self.stack) < self.in_formula:
                self.in_formula = None
            if top == tag:
                break

    def handle_data(self, data):
        if self.in_formula is not None and not self.in_container:
            self.formulas[-1]["raw"] += data


def _glyph(classes: str) -> str:
    r"""The character of a CHTML glyph, from its class (``mjx-c5C`` is ``\``)."""
    for name in classes.split():
        if name.startswith("mjx-c") and name != "mjx-c":
            try:
                return chr(int(name[5:], 16))
            except ValueError:
                continue
    return "?"


@dataclasses.dataclass
class Result:
    """What one page showed."""

    page: str
    expected: int
    rendered: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        """Whether the page passed."""
        return not self.problems


def dump_dom(chromium: str, html: Path, budget_ms: int = 20000) -> str:
    """The page's DOM after its scripts ran (MathJax included), from Chromium."""
    with tempfile.TemporaryDirectory(prefix="adamx-chromium-") as profile:
        result = subprocess.run(
            [
                chromium,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={budget_ms}",
                "--dump-dom",
                html.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError(f"{chromium} failed on {html}:\n{result.stderr[-2000:]}")
    return result.stdout


def screenshot(chromium: str, html: Path, out: Path, size: str = "1300,2400") -> None:
    """Saves a PNG of ``html`` as Chromium renders it, MathJax run."""
    with tempfile.TemporaryDirectory(prefix="adamx-chromium-") as profile:
        subprocess.run(
            [
                chromium,
                *FLAGS,
                f"--user-data-dir={profile}",
                "--virtual-time-budget=20000",
                f"--window-size={size}",
                f"--screenshot={out.resolve()}",
                html.resolve().as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )


def check_page(chromium: str, build: Path, page: str) -> Result:
    """Loads one built page in Chromium and checks its maths."""
    html = build / page
    source = _Source()
    source.feed(html.read_text(encoding="utf-8"))
    problems = []
    remote = [s for s in source.mathjax_src if s.startswith(("http:", "https:", "//"))]
    if remote:
        problems.append(f"MathJax is loaded from the network: {remote}")
    if source.formulas and not source.mathjax_src:
        problems.append("the page has maths but loads no MathJax")
    rendered = _Rendered()
    rendered.feed(dump_dom(chromium, html))
    if len(rendered.formulas) != source.formulas:
        problems.append(
            f"{source.formulas} formulas written, {len(rendered.formulas)} in the DOM"
        )
    done = 0
    for i, formula in enumerate(rendered.formulas):
        raw = formula["raw"].strip()
        if formula["containers"] != 1 or formula["glyphs"] == 0:
            problems.append(
                f"formula {i} not typeset ({formula['containers']} containers, "
                f"{formula['glyphs']} glyphs): {raw[:80]!r}"
            )
        elif any(t in raw for t in RAW_TEX):
            problems.append(f"formula {i} still shows raw TeX: {raw[:80]!r}")
        else:
            done += 1
    if rendered.errors:
        problems.append(f"MathJax reported {rendered.errors} TeX error(s)")
    if rendered.undefined:
        problems.append(f"TeX MathJax does not know: {rendered.undefined}")
    return Result(page, source.formulas, done, problems)


def pages_with_maths(build: Path) -> list[str]:
    """The built pages that hold at least one formula."""
    found = []
    for html in sorted(build.rglob("*.html")):
        if "_static" in html.parts or "_sources" in html.parts:
            continue
        source = _Source()
        source.feed(html.read_text(encoding="utf-8"))
        if source.formulas:
            found.append(html.relative_to(build).as_posix())
    return found


def main(argv: list[str] | None = None) -> int:
    """Checks the pages; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build", nargs="?", type=Path, default=DEFAULT_BUILD)
    parser.add_argument("--pages", nargs="+", help="pages relative to BUILD")
    parser.add_argument("--screenshot", type=Path, help="PNG of the first page")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)

    chromium = find_chromium()
    if chromium is None:
        print("Chromium not found: install it (Debian: chromium) or set CHROMIUM")
        return 2
    if not (args.build / "index.html").is_file():
        print(f"no built site in {args.build}: run sphinx-build first")
        return 2
    pages = args.pages or pages_with_maths(args.build)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda p: check_page(chromium, args.build, p), pages))
    for r in results:
        status = "ok" if r.ok else "FAILED"
        print(f"{status:6} {r.page}: {r.rendered}/{r.expected} formulas typeset")
        for problem in r.problems:
            print(f"       {problem}")
    total = sum(r.expected for r in results)
    failed = sum(not r.ok for r in results)
    print(f"{len(pages)} pages, {total} formulas, {failed} failed")
    if args.screenshot and pages:
        screenshot(chromium, args.build / pages[0], args.screenshot)
        print(f"screenshot of {pages[0]}: {args.screenshot}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
