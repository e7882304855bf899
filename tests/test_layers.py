"""The layer rule of docs/DESIGN.md: a module never imports one of a higher layer.

Every module of boom_jax/ and configs/ is parsed with ast (nothing is imported, so the test is cheap);
each import statement, at module level or inside a function, becomes an edge to the project module
it names. LAYERS below is the one written table of the layers (docs/DESIGN.md points here): the
longest matching prefix gives a module's layer, a module that no entry covers fails the test (place
a new module in the table when you add it), and an edge from a lower layer to a higher one fails
unless it is in ALLOWED_UPWARD, the named list of edges still being removed.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("boom_jax", "configs")

# Module (or package) prefix -> layer, lowest first. Longest prefix wins.
LAYERS: dict[str, int] = {
    # 1. Pure pieces that know nothing else of the project.
    "boom_jax": 1,  # the package __init__
    "boom_jax.errors": 1,
    "boom_jax.atomic_io": 1,
    "boom_jax.malloc_arenas": 1,
    "boom_jax.tree_paths": 1,
    "boom_jax.cli": 1,  # error reporting / flag parsing for the entry points; imports only absl
    "boom_jax.preflight": 1,
    "boom_jax.tokenization": 1,
    "boom_jax.packing": 1,
    "boom_jax.models": 1,
    "boom_jax.merging.methods": 1,
    "configs": 1,  # config data: import only configs.common and ml_collections
    # 2. Weights and data.
    "boom_jax.hf": 2,
    "boom_jax.data": 2,
    "boom_jax.model_io": 2,
    # 3. Training, evaluation, merging over checkpoints, mining.
    "boom_jax.training": 3,
    "boom_jax.evaluation": 3,
    "boom_jax.merging": 3,
    "boom_jax.mining": 3,
    # 4. Workflows.
    "boom_jax.boom": 4,
    "boom_jax.experiments": 4,
    # 5. Entry points (thin absl mains).
    "boom_jax.train": 5,
    "boom_jax.merge": 5,
    "boom_jax.export": 5,
    "boom_jax.encode": 5,
    "boom_jax.evaluate": 5,
    "boom_jax.mine": 5,
    "boom_jax.score": 5,
    "boom_jax.experiments.__main__": 5,
}

# (importer, imported) edges that still run up the layers, each with what removes it; empty now
# (models/encoder -> hf/loader went when load_encoder moved to hf/encoders.py). A listed edge that no
# longer exists fails the test, so the list only shrinks.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def project_modules() -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every .py file of the project packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _known(name: str, modules: dict[str, pathlib.Path]) -> str:
    """`name` if it is a module, else the closest enclosing module (`pkg.mod.attr` -> `pkg.mod`)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def import_edges(modules: dict[str, pathlib.Path]) -> set[tuple[str, str, int]]:
    """(importer, imported module, line) for every project import, module level or in a function."""
    edges = set()
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                if target.split(".")[0] in PACKAGES:
                    edges.add((module, _known(target, modules), node.lineno))
    return edges


def layer_of(module: str) -> int | None:
    """The layer of the longest LAYERS prefix covering `module` (None: not in the table)."""
    best = None
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return best[1] if best else None


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in project_modules() if layer_of(m) is None)
    assert not unplaced, f"modules missing from tests/test_layers.py LAYERS: {unplaced}"


def test_no_module_imports_a_higher_layer():
    modules = project_modules()
    upward = sorted(
        f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)}) at line {line}"
        for src, dst, line in import_edges(modules)
        if (layer_of(dst) or 0) > (layer_of(src) or 0) and (src, dst) not in ALLOWED_UPWARD
    )
    assert not upward, "imports up the layers (docs/DESIGN.md, layer rule):\n" + "\n".join(upward)
    edges = {(src, dst) for src, dst, _ in import_edges(modules)}
    stale = sorted(edge for edge in ALLOWED_UPWARD if edge not in edges)
    assert not stale, f"ALLOWED_UPWARD lists edges that are gone (remove them): {stale}"


def test_function_level_and_relative_imports_are_seen_and_an_upward_edge_is_caught(tmp_path):
    """A planted module (layer 1) importing training/loop (layer 3) inside a function, relatively."""
    fake = tmp_path / "fake.py"
    fake.write_text("import numpy\n\ndef f():\n    from ..training import loop\n    from . import lora\n")
    modules = dict(project_modules(), **{"boom_jax.models.fake": fake})
    edges = {(src, dst) for src, dst, _ in import_edges(modules) if src == "boom_jax.models.fake"}
    assert edges == {("boom_jax.models.fake", "boom_jax.training.loop"),
                     ("boom_jax.models.fake", "boom_jax.models.lora")}
    assert layer_of("boom_jax.training.loop") > layer_of("boom_jax.models.fake")
    real = {(src, dst) for src, dst, _ in import_edges(project_modules())}
    assert ("boom_jax.model_io", "boom_jax.tree_paths") in real
    assert ("boom_jax.training.config_validation", "configs.common") in real
    assert layer_of("boom_jax.merging.methods") == 1 and layer_of("boom_jax.merging.streaming") == 3
    assert layer_of("boom_jax.experiments.__main__") == 5 and layer_of("boom_jax.experiments.plan") == 4
