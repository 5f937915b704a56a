"""The docs, followed literally: every code block of README.md and docs/*.md whose fence is
marked ``runnable`` is run, as a reader would run it.

The marker is the word ``runnable`` after the language in the fence's info string::

    ```sh runnable          (also bash)
    ```python runnable

Renderers (GitHub, PyPI) read only the first word, so the mark does not show. A document's
runnable blocks run in order, in one fresh directory that holds a copy of ``examples/``,
with this venv's ``bin`` first on PATH, a private HOME and state directory (conftest), and no
``LINEAGE_*`` settings of the caller. A shell block runs under ``bash -euo pipefail``; the
directory it ends in is where the next block starts (a reader's shell keeps its ``cd``). A
Python block runs with this venv's interpreter. Any non-zero exit fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = {"sh", "bash", "shell"}
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
BLOCK_TIMEOUT = 300


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def closes(line: str, fence: str) -> bool:
    """A closing fence: up to 3 spaces, the opening's character at least as many times, nothing else."""
    mark = line.strip()
    return len(line) - len(line.lstrip(" ")) <= 3 and set(mark) == {fence[0]} and len(mark) >= len(fence)


def fenced_blocks(path: Path) -> list[tuple[Block, list[str]]]:
    """Every fenced block of a Markdown file, with the words of its info string."""
    blocks: list[tuple[Block, list[str]]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, words = opening["fence"], opening["info"].split()
        body, j = [], i + 1
        while j < len(lines) and not closes(lines[j], fence):
            body.append(lines[j])
            j += 1
        blocks.append((Block(path, i + 1, words[0] if words else "", "\n".join(body) + "\n"), words))
        i = j + 1
    return blocks


def runnable_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file whose info string has the word ``runnable``."""
    blocks: list[Block] = []
    for block, words in fenced_blocks(path):
        if "runnable" in words[1:]:
            if block.language not in SHELLS | {"python"}:
                raise ValueError(f"{path}:{block.line}: a runnable block must be sh, bash or python, "
                                 f"not {block.language!r}")
            blocks.append(block)
    return blocks


def reader_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VIRTUAL_ENV", None)
    return env


def run_block(block: Block, cwd: Path, scratch: Path) -> Path:
    """Run one block in ``cwd``; return the directory the next block starts in."""
    env = reader_environment()
    if block.language == "python":
        command = [sys.executable, "-c", block.code]
        next_cwd = cwd
    else:
        cwd_file = scratch / "cwd-after-block"
        cwd_file.unlink(missing_ok=True)
        env["DOCS_CWD_FILE"] = str(cwd_file)
        script = f'trap \'pwd > "$DOCS_CWD_FILE"\' EXIT\n{block.code}'
        command = ["bash", "-euo", "pipefail", "-c", script]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        pytest.fail(f"{block.where()} ({block.language}) exited {result.returncode}\n"
                    f"--- stdout (end)\n{result.stdout[-3000:]}\n--- stderr (end)\n{result.stderr[-3000:]}",
                    pytrace=False)
    if block.language != "python":
        next_cwd = Path(cwd_file.read_text().strip())
    return next_cwd


def documents_with_runnable_blocks() -> list[Path]:
    return [path for path in DOCUMENTS if runnable_blocks(path)]


@pytest.mark.slow
@pytest.mark.parametrize("document", documents_with_runnable_blocks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_runnable_blocks_of_a_document(document, tmp_path):
    reader = tmp_path / "reader"
    shutil.copytree(ROOT / "examples", reader / "examples",
                    ignore=shutil.ignore_patterns("__pycache__", ".snakemake", ".lineage"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    cwd = reader
    for block in runnable_blocks(document):
        cwd = run_block(block, cwd, scratch)


def test_the_readme_tour_is_among_the_runnable_blocks():
    """The tour is what a newcomer runs first: it stays marked, and so stays tested."""
    shell = [b for b in runnable_blocks(ROOT / "README.md") if b.language in SHELLS]
    assert any("lineage-ledger run" in b.code and "verify-lineage" in b.code for b in shell)
    python = [b for b in runnable_blocks(ROOT / "README.md") if b.language == "python"]
    assert any("open_ledger" in b.code for b in python)
    assert any("open_ledger" in b.code for b in runnable_blocks(ROOT / "docs" / "guide.md"))


def test_the_extractor_reads_fences_as_commonmark_does(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "text\n\n```sh\nnot marked\n```\n\n"
        "```sh runnable\necho one\n````not a close` `\n```\n\n"
        "~~~~python runnable\nprint('```')\n~~~~\n\n"
        "````bash runnable\n```\nstill inside\n````\n"
    )
    blocks = runnable_blocks(doc)
    assert [(b.line, b.language) for b in blocks] == [(7, "sh"), (12, "python"), (16, "bash")]
    assert blocks[1].code == "print('```')\n"
    assert blocks[2].code == "```\nstill inside\n"
    doc.write_text("```toml runnable\nx = 1\n```\n")
    with pytest.raises(ValueError, match="must be sh, bash or python"):
        runnable_blocks(doc)


def test_a_failing_block_fails_with_its_place_and_output(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("```sh runnable\ncd /\necho went\n```\n\n```sh runnable\npwd\nfalse\necho never\n```\n")
    first, second = runnable_blocks(doc)
    doc_block = Block(ROOT / "README.md", second.line, second.language, second.code)  # a path under ROOT
    cwd = run_block(first, tmp_path, tmp_path)
    assert cwd == Path("/")  # the next block starts where the last one ended
    with pytest.raises(pytest.fail.Exception, match=r"README.md:6 \(sh\) exited 1\n--- stdout \(end\)\n/\n") as failed:
        run_block(doc_block, cwd, tmp_path)
    assert "never" not in str(failed.value)  # set -e: the block stopped at the failure


def test_every_make_target_the_docs_name_exists():
    """`make install-airflow` and `make bench-airflow` were named in the docs long before
    they existed. Every `make TARGET` in backticks, and every `make` line of a code block,
    must be a target of the Makefile."""
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))
    named: dict[str, str] = {}
    for path in [*DOCUMENTS, *sorted((ROOT / "plugins").glob("*/README.md"))]:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"`make ([\w-]+)", text):
            named.setdefault(match[1], f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}")
        for block, _ in fenced_blocks(path):
            if block.language in SHELLS | {""}:
                for target in re.findall(r"^\s*make ([\w-]+)", block.code, flags=re.MULTILINE):
                    named.setdefault(target, block.where())
    assert "install-airflow" in named and "test" in named
    missing = {target: where for target, where in named.items() if target not in targets}
    assert missing == {}
