"""The library's layers: a lower layer never imports a higher one, not even inside a function.

Models do not know the metrics that judge them, techniques do not know the training loops that
tune them, and nothing but the book knows the book. A new top-level module or package must be given
a layer here before it can be imported by anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "lib" / "accelerando"

# lowest first; modules in one layer may import each other
LAYERS: list[set[str]] = [
    {"__init__", "__main__", "audio", "music", "musical_controls", "machine", "checkpoint", "record", "players"},
    {"data"},
    {"models"},
    {"metrics"},
    {"quant", "sparse", "attention", "edit", "editing", "distributed"},
    {"train"},
    {"bench", "serve", "listening", "dashboard"},
    {"book"},
]


def layer_of(top: str) -> int:
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"accelerando.{top} has no layer: add it to LAYERS in {Path(__file__).name}")


def top_level(module_file: Path) -> str:
    """`accelerando.models.musicgen_lite` -> 'models'; `accelerando/audio.py` -> 'audio'."""
    rel = module_file.relative_to(LIB)
    return rel.parts[0].removesuffix(".py")


def imported_tops(module_file: Path) -> list[tuple[int, str]]:
    """(line, top-level accelerando module) of every import in the file, at any depth."""
    tree = ast.parse(module_file.read_text(), filename=str(module_file))
    package = module_file.relative_to(LIB).parent.parts  # the importing module's package below accelerando
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "accelerando" and len(parts) > 1:
                    found.append((node.lineno, parts[1]))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "accelerando":
                    continue
                rest = parts[1:]
            else:
                base = list(package[: len(package) - (node.level - 1)]) if node.level > 1 else list(package)
                if node.level - 1 > len(package):
                    raise AssertionError(f"{module_file}:{node.lineno}: relative import above the package")
                rest = base + ((node.module or "").split(".") if node.module else [])
            if rest:
                found.append((node.lineno, rest[0]))
            else:  # `from .. import x` at the top: each name is a module (or a package attribute)
                found.extend((node.lineno, alias.name) for alias in node.names
                             if (LIB / alias.name).exists() or (LIB / f"{alias.name}.py").exists())
    return found


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(LIB.rglob("*.py")):
        own = layer_of(top_level(path))
        for line, top in imported_tops(path):
            if layer_of(top) > own:
                problems.append(f"{path.relative_to(LIB.parent)}:{line} imports accelerando.{top} "
                                f"(layer {layer_of(top)} above its own {own})")
    return problems


def test_every_module_has_a_layer():
    for path in LIB.iterdir():
        if path.name.startswith((".", "_")) and path.name not in ("__init__.py", "__main__.py"):
            continue
        if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()):
            layer_of(path.name.removesuffix(".py"))


def test_no_lower_layer_imports_a_higher_one():
    problems = upward_imports()
    assert not problems, "imports that run upward:\n" + "\n".join(problems)


def test_the_checker_sees_imports_inside_functions(tmp_path, monkeypatch):
    # a models file importing bench inside a function must be caught
    fake = tmp_path / "accelerando"
    (fake / "models").mkdir(parents=True)
    (fake / "models" / "thing.py").write_text("def f():\n    from ..bench import x\n    return x\n")
    monkeypatch.setattr(__import__(__name__), "LIB", fake)
    assert imported_tops(fake / "models" / "thing.py") == [(2, "bench")]
    assert upward_imports() == ["accelerando/models/thing.py:2 imports accelerando.bench (layer 6 above its own 2)"]
