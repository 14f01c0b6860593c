"""Every ```python block of README.md runs on its own, in a fresh interpreter.

Each block runs in its own subprocess, as a reader pasting it into a new file
would run it: nothing from other blocks or from this test suite is defined.
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
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
ANY_FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->\s*$")
TIMEOUT_S = 120


@dataclasses.dataclass(frozen=True)
class Block:
    """One ```python block: its code, where it is, and why it is not run."""

    index: int
    line: int  # the README line of the block's first line of code
    section: str  # the nearest heading above it
    code: str
    not_run: str | None

    @property
    def id(self) -> str:
        first = next((s for s in self.code.splitlines() if s.strip()), "")
        return f"{self.index}-L{self.line}-{first.strip()[:40]}"


def python_blocks(markdown: str) -> list[Block]:
    """The ```python blocks of ``markdown``, in order."""
    blocks = []
    for index, match in enumerate(FENCE.finditer(markdown)):
        before = markdown[: match.start()]
        headings = re.findall(r"^#+ (.*)$", ANY_FENCE.sub("", before), re.M)
        previous = [line for line in before.splitlines() if line.strip()]
        marker = NOT_RUN.search(previous[-1]) if previous else None
        blocks.append(
            Block(
                index=index,
                line=before.count("\n") + 2,
                section=headings[-1] if headings else "",
                code=match.group(1),
                not_run=marker.group(1) if marker else None,
            )
        )
    return blocks


def run_block(block: Block, tmp_path: pathlib.Path, check: str = "") -> str:
    """Runs ``block`` (then ``check``) in a fresh interpreter; returns its stdout."""
    # Padding puts each line at its README line number in tracebacks.
    source = "\n" * (block.line - 1) + block.code + check
    driver = (
        "import sys; source = sys.stdin.read(); "
        "exec(compile(source, 'README.md', 'exec'), {'__name__': '__main__'})"
    )
    env = dict(os.environ)
    path = [str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    env["JAX_NUMPY_RANK_PROMOTION"] = "raise"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", driver],
        input=source,
        capture_output=True,
        text=True,
        cwd=tmp_path,  # a block that writes files writes them here
        env=env,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, (
        f"README.md block {block.index} (line {block.line}, section "
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

BLOCKS = python_blocks(README.read_text())


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs_on_its_own(block, tmp_path):
    if block.not_run:
        pytest.skip(f"README.md line {block.line}: not run: {block.not_run}")
    stdout = run_block(block, tmp_path, AFTER.get(block.section, ""))
    if block.section in PRINTS:
        lines, starts = stdout.splitlines(), PRINTS[block.section]
        assert len(lines) == len(starts), stdout
        for line, start in zip(lines, starts, strict=True):
            assert line.startswith(start), (line, start)


def test_readme_blocks_and_their_checks():
    sections = [b.section for b in BLOCKS if not b.not_run]
    assert len(sections) >= 4
    assert set(AFTER) | set(PRINTS) <= set(sections)
    (ten_lines,) = (b for b in BLOCKS if b.section == "Ten lines")
    assert len(ten_lines.code.strip().splitlines()) <= 12


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
    assert blocks[0].id == "0-L4-# not a heading"
    assert blocks[1].id == "1-L12-jax.distributed.initialize()"
