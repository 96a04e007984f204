"""Every snippet in README.md and docs/*.md runs as written (issue 12, item 11).

Python blocks: every block compiles and defines or imports every name it uses. Executed:
README "Use it on your model" (tests/test_readme.py), README "Original DiT checkpoints" (with a
tiny DiT saved under the checkpoint's file name, and ``.cuda()`` dropped on a CPU machine) and
docs/architecture.md's method example. Only checked (they need hub downloads): README
"diffusers pipelines" and docs/diffusers.md. Shell blocks: every ``relcache`` command line parses.
"""

from __future__ import annotations

import ast
import builtins
import re
import shlex
from pathlib import Path

import pytest
import torch

import relcache
import relcache.models
from relcache.caching.methods import METHODS
from relcache.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks/README.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks(language: str) -> list[tuple[str, int, str]]:
    """(file, index, code) of every fenced block in ``language`` ("" = no language given)."""
    found = []
    for path in DOCS:
        blocks = [m for m in FENCE.finditer(path.read_text()) if m.group(1) in language.split("|")]
        found += [(path.relative_to(ROOT).as_posix(), i, m.group(2)) for i, m in enumerate(blocks)]
    return found


PYTHON = _blocks("python")
# the rest: checked only
EXECUTED = {"README.md": {0, 1, 4}, "docs/architecture.md": {0}, "docs/granularity.md": {0}}
CHECKED_ONLY = {(f, i) for f, i, _ in PYTHON if i not in EXECUTED.get(f, set())}


def _undefined(code: str) -> set[str]:
    """Names a block loads but never binds (import, assignment, def, class, argument)."""
    tree = ast.parse(code)
    bound, used = set(dir(builtins)), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, ast.Store) else used).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return used - bound


@pytest.mark.parametrize(("doc", "index", "code"), PYTHON, ids=[f"{f}#{i}" for f, i, _ in PYTHON])
def test_python_block_compiles_and_defines_every_name(doc: str, index: int, code: str) -> None:
    compile(code, f"{doc}#{index}", "exec")
    assert not _undefined(code), f"{doc} block {index} uses undefined names"


def test_the_blocks_that_are_only_checked_are_the_hub_ones() -> None:
    texts = {(f, i): code for f, i, code in PYTHON}
    # hub downloads (from_pretrained) or a GPU ("cuda"): not runnable here, checked only
    assert CHECKED_ONLY and all(
        "from_pretrained" in texts[k] or '"cuda"' in texts[k] for k in CHECKED_ONLY
    )


def test_readme_dit_checkpoint_block_runs(tmp_path, monkeypatch) -> None:
    """The block as written, on a tiny DiT-XL/2-shaped stand-in saved as the checkpoint."""
    code = next(c for f, _, c in PYTHON if f == "README.md" and "load_dit_checkpoint" in c)
    tiny = dict(depth=1, hidden_size=32, num_heads=2, input_size=8)
    create = relcache.models.create_dit
    monkeypatch.setattr(relcache.models, "create_dit", lambda name: create(name, **tiny))
    torch.save(create("DiT-XL/2", **tiny).state_dict(), tmp_path / "DiT-XL-2-256x256.pt")
    monkeypatch.chdir(tmp_path)
    if not torch.cuda.is_available():
        code = code.replace(".cuda()", "")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["latents"].shape == (2, 4, 8, 8) and torch.isfinite(scope["latents"]).all()
    assert relcache.stats(scope["model"]).nfc < 50


def test_architecture_method_example_runs() -> None:
    code = next(c for f, _, c in PYTHON if f == "docs/architecture.md")
    try:
        exec(compile(code, "docs/architecture.md", "exec"), {})
        config = relcache.build_method("everyother")
        assert config.schedule(6) == [0, 2, 4]
    finally:
        METHODS.pop("everyother", None)


def _command_lines() -> list[str]:
    """Every ``relcache ...`` command in a shell block (continuation lines joined)."""
    lines = []
    for _, _, code in _blocks("|bash"):
        for line in code.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("relcache "):
                lines.append(line.split(" #")[0])
    return lines


@pytest.mark.parametrize("line", _command_lines())
def test_shell_command_parses(line: str) -> None:
    argv = shlex.split(line)[1:]
    args = build_parser().parse_args(argv)
    assert callable(args.func)
