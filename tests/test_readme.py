"""Every ```python block of README.md and of the site's pages runs on its own.

The pages are the Markdown sources under ``docs/``; the guides moved there
from the README keep their code, and it keeps running here.

Each block runs in its own subprocess, as a reader pasting it into a new file
would run it: nothing from other blocks or from this test suite is defined.
The subprocesses run beside the rest of the suite (tests/background.py).
Warnings are errors and implicit rank promotion raises, as in the suite
(``pyproject.toml``, ``tests/conftest.py``). Tracebacks name README.md and
the README's own line numbers.

A block that cannot run here (several hosts, a TPU) is marked on the line
before its fence, and is reported as skipped with the reason given:

    <!-- not run: needs two hosts -->
    ```python

Some blocks promise a result: ``AFTER`` and ``PRINTS`` check it, by section.
"""

import dataclasses
import functools
import os
import pathlib
import re
import sys

import background
import checkout
import pytest

import adamx

FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
ANY_FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->\s*$")
TIMEOUT_S = 120


@dataclasses.dataclass(frozen=True)
class Block:
    """One ```python block: its code, where it is, and why it is not run."""

    file: str  # README.md or a page under docs/
    index: int
    line: int  # the file's line of the block's first line of code
    section: str  # the nearest heading above it
    code: str
    not_run: str | None

    @property
    def id(self) -> str:
        first = next((s for s in self.code.splitlines() if s.strip()), "")
        return f"{self.file}-{self.index}-L{self.line}-{first.strip()[:40]}"


def python_blocks(markdown: str, file: str = "README.md") -> list[Block]:
    """The ```python blocks of ``markdown``, in order."""
    blocks = []
    for index, match in enumerate(FENCE.finditer(markdown)):
        before = markdown[: match.start()]
        headings = re.findall(r"^#+ (.*)$", ANY_FENCE.sub("", before), re.M)
        previous = [line for line in before.splitlines() if line.strip()]
        marker = NOT_RUN.search(previous[-1]) if previous else None
        blocks.append(
            Block(
                file=file,
                index=index,
                line=before.count("\n") + 2,
                section=headings[-1] if headings else "",
                code=match.group(1),
                not_run=marker.group(1) if marker else None,
            )
        )
    return blocks


DRIVER = (
    "import sys; source = sys.stdin.read(); "
    "exec(compile(source, sys.argv[1], 'exec'), {'__name__': '__main__'})"
)


def block_command(block: Block, check: str, env: dict[str, str]) -> background.Command:
    """Runs ``block`` (then ``check``) in a fresh interpreter, in an empty folder
    (a block that writes files writes them there), warnings as errors."""
    # Padding puts each line at its README line number in tracebacks.
    source = "\n" * (block.line - 1) + block.code + check
    # The adamx this process imported (the checkout's or an installed one).
    path = [str(pathlib.Path(adamx.__file__).parents[1]), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    env["JAX_NUMPY_RANK_PROMOTION"] = "raise"
    args = [sys.executable, "-W", "error", "-c", DRIVER, block.file]
    return background.Command(args, TIMEOUT_S, env=env, input=source)


def run_block(block: Block) -> str:
    """The stdout of ``block`` run on its own; fails on a nonzero exit."""
    result = JOBS[block.file, block.index].result()
    assert result.returncode == 0, (
        f"{block.file} block {block.index} (line {block.line}, section "
        f"{block.section!r}) failed on its own:\n{result.stderr}"
    )
    return result.stdout


# section -> code run after the block, in its namespace: what the block promises.
AFTER = {
    "Ten lines": "residual = x @ params['w'] + params['b'] - y\n"
    "assert float(jnp.max(jnp.abs(residual))) < 1e-2, residual\n",
}
# section -> the start of each line the block prints.
PRINTS = {
    "Lean optimizer state: bf16, 8-bit and 4-bit": ["532484"],
    "Watching training: statistics, NaN and spikes": ["1 ", "51 "],
}

# Read at collection, for one test per block; without a checkout, one test
# that skips naming README.md.
_README = checkout.find("README.md")
_DOCS = checkout.find("docs")
PAGES = ([_README] if _README else []) + (
    sorted(p for p in _DOCS.rglob("*.md") if "_build" not in p.parts) if _DOCS else []
)
BLOCKS = [
    block
    for page in PAGES
    for block in python_blocks(
        page.read_text(encoding="utf-8"), str(page.relative_to(checkout.root()))
    )
]


def _wants(block: Block):
    def wanted_by(item: pytest.Item) -> bool:
        callspec = getattr(item, "callspec", None)
        return (
            getattr(item, "module", None) is not None
            and item.module.__name__ == __name__
            and callspec is not None
            and callspec.params.get("block") is block
        )

    return wanted_by


# Each block runs in a background job (background.py), started as soon as its
# test is selected, beside the rest of the suite.
JOBS = {
    (block.file, block.index): background.Job(
        f"readme-block-{block.file.replace('/', '-')}-{block.index}",
        functools.partial(block_command, block, AFTER.get(block.section, "")),
        _wants(block),
    )
    for block in BLOCKS
    if not block.not_run
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "block",
    BLOCKS or [pytest.param(None, id="README.md-missing")],
    ids=[b.id for b in BLOCKS] or None,
)
def test_readme_block_runs_on_its_own(block):
    if block is None:
        checkout.require("README.md")
    if block.not_run:
        pytest.skip(f"{block.file} line {block.line}: not run: {block.not_run}")
    stdout = run_block(block)
    if block.section in PRINTS:
        lines, starts = stdout.splitlines(), PRINTS[block.section]
        assert len(lines) == len(starts), stdout
        for line, start in zip(lines, starts, strict=True):
            assert line.startswith(start), (line, start)


def test_readme_blocks_and_their_checks():
    checkout.require("README.md")
    checkout.require("docs")
    sections = [b.section for b in BLOCKS if not b.not_run]
    assert len(sections) >= 4
    assert set(AFTER) | set(PRINTS) <= set(sections)
    (ten_lines,) = (
        b for b in BLOCKS if b.section == "Ten lines" and b.file == "README.md"
    )
    assert len(ten_lines.code.strip().splitlines()) <= 12
    # the guides' code moved to the site with them, and runs there
    assert {b.file for b in BLOCKS} >= {"README.md", "docs/lean_state.md"}


def test_not_run_marker_is_read_from_the_line_before_the_fence():
    markdown = (
        "# Title\n\n```python\n# not a heading\nx = 1\n```\n\n## Hosts\n\n"
        "<!-- not run: needs two hosts -->\n```python\n"
        "jax.distributed.initialize()\n```\n\n```bash\nls\n```\n"
        "<!-- not run: a stray marker -->\n\nText.\n\n```python\ny = 2\n```\n"
    )
    blocks = python_blocks(markdown)
    assert [(b.line, b.section, b.code, b.not_run) for b in blocks] == [
        (4, "Title", "# not a heading\nx = 1\n", None),
        (12, "Hosts", "jax.distributed.initialize()\n", "needs two hosts"),
        (23, "Hosts", "y = 2\n", None),
    ]
    assert blocks[0].id == "README.md-0-L4-# not a heading"
    assert blocks[1].id == "README.md-1-L12-jax.distributed.initialize()"
