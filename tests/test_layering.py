"""Layers point one way, checked on every import of every module (also those inside functions):

- ``fpn`` (the library) imports neither ``tune`` nor ``data_prep``;
- ``data_prep`` imports from ``fpn`` only its data layer, ``fpn.data``, and the storage layer under
  it, ``fpn.storage`` (locations, the lease);
- inside ``fpn``, training and inference never import each other: both stand on ``fpn.storage``
  (a run's files) and ``fpn.device`` (the device policy);
- ``tune`` (orchestration) may import both;
- no module calls another package's command-line entry (``*main``) with argv strings.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fpn", "data_prep", "tune")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, package: list[str] | None = None) -> list[tuple[int, str, list[str]]]:
    """``(line, imported module, imported names)`` for every import statement in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if package is None:
        package = _module_name(path).split(".")
        if path.name != "__init__.py":
            package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module, [a.name for a in node.names]))
    return out


def _files(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def _allowed(importer: str, module: str) -> bool:
    top = module.split(".")[0]
    if top not in PACKAGES or top == importer:
        return True
    if importer == "fpn":
        return False
    if importer == "data_prep":
        return any(module == m or module.startswith(f"{m}.") for m in ("fpn.data", "fpn.storage"))
    return True  # tune: the top layer


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package):
    bad = []
    for path in _files(package):
        for line, module, names in _imports(path):
            if not _allowed(package, module):
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
            # `from fpn import data` is fpn.data; `from fpn import training` is not
            if package == "data_prep" and module == "fpn":
                bad += [f"{path.relative_to(ROOT)}:{line}: imports fpn.{n}" for n in names
                        if n not in ("data", "storage")]
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_calls_another_packages_command_line(package):
    bad = []
    for path in _files(package):
        for line, module, names in _imports(path):
            top = module.split(".")[0]
            if top in PACKAGES and top != package and (
                    module.endswith("__main__") or any(n.endswith("main") for n in names)):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module} {names}")
    assert not bad, "command-line entries called from another package:\n" + "\n".join(bad)


def test_the_scan_sees_imports_inside_functions_and_relative_ones(tmp_path):
    f = tmp_path / "probe.py"
    f.write_text("def f():\n    from data_prep.convert import convert\n"
                 "    from ..training import driver\n")
    found = [m for _, m, _ in _imports(f, ["fpn", "data"])]
    assert found == ["data_prep.convert", "fpn.training"]
    assert not _allowed("fpn", found[0]) and not _allowed("data_prep", found[1])


#: sub-packages of fpn that must not import each other (either way)
APART = ("fpn.training", "fpn.inference")


def test_training_and_inference_do_not_import_each_other():
    bad = []
    for path in _files("fpn"):
        me = _module_name(path)
        mine = next((a for a in APART if me == a or me.startswith(f"{a}.")), None)
        if mine is None:
            continue
        for line, module, names in _imports(path):
            full = [module] + [f"{module}.{n}" for n in names] if module == "fpn" else [module]
            for m in full:
                other = next((a for a in APART if a != mine and (m == a or m.startswith(f"{a}."))),
                             None)
                if other:
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {mine} imports {m}")
    assert not bad, "training and inference import each other:\n" + "\n".join(bad)
