"""Every torch.load in the package goes through checkpoint.load_checkpoint, which passes weights_only=True.

A checkpoint is a pickle: loaded without weights_only, a file from someone else can run code. The package's
source is parsed (not grepped), so aliases such as ``import torch as th`` or ``from torch import load`` are
found too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import simclrv2

PACKAGE_DIR = Path(simclrv2.__file__).resolve().parent
LOADERS = {"torch.load", "torch.serialization.load"}
SAFE_LOADER = ("checkpoint.py", "load_checkpoint")


@dataclass(frozen=True)
class LoadCall:
    file: str  # relative to the package
    line: int
    function: str  # the enclosing function ("<module>" at top level)
    weights_only: object  # the literal passed as weights_only, or None when absent / not a literal


def _imported_names(tree: ast.AST) -> dict[str, str]:
    """Local name -> the dotted torch name it stands for."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "torch" or alias.name.startswith("torch."):
                    # `import torch.serialization` binds `torch`; `import torch.serialization as s` binds s.
                    names[alias.asname or "torch"] = alias.name if alias.asname else "torch"
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "torch":
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr, names: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in names:
        return None
    return ".".join([names[node.id], *reversed(parts)])


def find_load_calls(source: str, file: str) -> list[LoadCall]:
    """Every call of torch.load (under any alias) in ``source``, with its enclosing function."""
    tree = ast.parse(source)
    names = _imported_names(tree)
    calls: list[LoadCall] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call) and _dotted(child.func, names) in LOADERS:
                flag = next((k.value for k in child.keywords if k.arg == "weights_only"), None)
                literal = flag.value if isinstance(flag, ast.Constant) else None
                calls.append(LoadCall(file, child.lineno, function, literal))
            visit(child, inner)

    visit(tree, "<module>")
    return calls


def package_load_calls() -> list[LoadCall]:
    calls = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        calls += find_load_calls(path.read_text(encoding="utf-8"), path.relative_to(PACKAGE_DIR).as_posix())
    return calls


def test_finder_sees_torch_load_under_every_alias():
    source = """
import torch
import torch as th
import torch.serialization
from torch import load as fetch
from torch.serialization import load

def a(p):
    torch.load(p, weights_only=True)
    th.load(p)
    torch.serialization.load(p)
    fetch(p, weights_only=False)
    load(p)
    torch.save({}, p)
    json.load(p)
"""
    calls = find_load_calls(source, "x.py")
    assert [(c.line, c.function, c.weights_only) for c in calls] == [
        (9, "a", True), (10, "a", None), (11, "a", None), (12, "a", False), (13, "a", None)]


def test_every_torch_load_passes_weights_only_true():
    unsafe = [c for c in package_load_calls() if c.weights_only is not True]
    assert not unsafe, ("torch.load without weights_only=True (a checkpoint from someone else could run code): "
                        + ", ".join(f"{c.file}:{c.line} in {c.function}" for c in unsafe))


def test_every_torch_load_is_the_one_safe_loader():
    calls = package_load_calls()
    elsewhere = [c for c in calls if (c.file, c.function) != SAFE_LOADER]
    assert not elsewhere, ("torch.load outside checkpoint.load_checkpoint; load through it instead: "
                           + ", ".join(f"{c.file}:{c.line} in {c.function}" for c in elsewhere))
    assert len(calls) == 1 and calls[0].weights_only is True, calls
