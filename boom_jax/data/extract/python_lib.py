"""Docstring -> function pairs from the running interpreter's standard library (`Lib/`)."""

from __future__ import annotations

import ast
import textwrap
import dataclasses
import sysconfig
from pathlib import Path


_SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "lib2to3", "__pycache__"}


@dataclasses.dataclass(frozen=True)
class PyFunction:
    module: str
    qualname: str
    line: int
    docstring: str
    code: str


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _strip_docstring(node: ast.AST, lines: list[str]) -> str:
    body = node.body
    first = body[0]
    start = node.lineno - 1 if not node.decorator_list else node.decorator_list[0].lineno - 1
    kept = lines[start : first.lineno - 1] + lines[first.end_lineno : node.end_lineno]
    return "\n".join(kept)


def read_python_functions(root: Path | None = None, min_doc_words: int = 4, min_lines: int = 3) -> list[PyFunction]:
    """Functions and methods with a docstring of >= `min_doc_words` words and a body of >= `min_lines` lines.

    The code is the function's source with its docstring removed (else retrieval is trivial).
    """
    root = Path(root or stdlib_dir())
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_PARTS.intersection(rel.parts):
            continue
        source = path.read_text("utf-8", errors="replace")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        lines = source.splitlines()
        module = ".".join(rel.with_suffix("").parts)
        stack = [(tree, "")]
        while stack:
            parent, prefix = stack.pop()
            for node in ast.iter_child_nodes(parent):
                if isinstance(node, ast.ClassDef):
                    stack.append((node, f"{prefix}{node.name}."))
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if not doc or len(doc.split()) < min_doc_words:
                        continue
                    code = textwrap.dedent(_strip_docstring(node, lines))
                    if len([line for line in code.splitlines() if line.strip()]) < min_lines + 1:
                        continue
                    out.append(PyFunction(module, prefix + node.name, node.lineno, doc, code))
    return sorted(out, key=lambda f: (f.module, f.line))
