"""Every MLflow tag key is named in ``fpn/tags.py`` and nowhere else (its docstring's promise):
no module of the project writes or filters on a literal tag key, so a search filter and the
writer it depends on cannot drift apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("fpn", "tune", "data_prep", "benchmarks")
TAGS_MODULE = ROOT / "fpn" / "tags.py"
#: what an ``fpn.*`` or MLflow tag key looks like (module paths are told apart below)
TAG_KEY = re.compile(r"(fpn|mlflow)\.[A-Za-z_]+$")
#: calls that write a tag: their key argument (or the keys of a dict argument) must not be literal
TAG_WRITERS = ("set_tag", "set_tags", "set_model_version_tag", "set_registered_model_tag",
               "create_run", "find_or_create_run", "register_version", "register_model")


def _is_module_path(text: str) -> bool:
    """``fpn.models`` (a package of ours) or ``mlflow.entities`` (a module of MLflow's)."""
    parts = text.split(".")
    if parts[0] == "fpn":
        base = ROOT.joinpath(*parts)
        return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()
    import importlib.util

    try:
        return importlib.util.find_spec(text) is not None
    except (ImportError, ValueError):
        return False


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _literal_keys(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Dict):
        return [k.value for k in node.keys if isinstance(k, ast.Constant)
                and isinstance(k.value, str)]
    return []


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docs = _docstrings(tree)
    where = path.relative_to(ROOT)
    out = []
    for node in ast.walk(tree):
        # an fpn.* / mlflow.* tag key anywhere: a string or the head of an f-string
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if TAG_KEY.match(node.value) and not _is_module_path(node.value):
                out.append(f"{where}:{node.lineno}: literal tag key {node.value!r}")
            elif "tags.`" in node.value and re.search(r"tags\.`(fpn|mlflow)\.", node.value):
                out.append(f"{where}:{node.lineno}: literal tag key in a filter {node.value!r}")
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0],
                                                                           ast.Constant):
            head = str(node.values[0].value)
            if head.startswith(("fpn.", "mlflow.")) and "." not in head[len("fpn."):]:
                out.append(f"{where}:{node.lineno}: literal tag key f-string {head!r}...")
        # a tag writer given a literal key (plain words: model-version tags)
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in TAG_WRITERS:
                args = list(node.args) + [k.value for k in node.keywords if k.arg == "tags"]
                keyed = args[2:3] if name == "set_model_version_tag" else args
                for arg in keyed:
                    if isinstance(arg, ast.Dict) or (name in ("set_tag",) and arg is args[1]):
                        out += [f"{where}:{node.lineno}: {name}(... {k!r} ...)"
                                for k in _literal_keys(arg)]
    return out


def test_no_module_outside_tags_writes_a_literal_tag_key():
    bad = []
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path != TAGS_MODULE and "__pycache__" not in path.parts:
                bad += _problems(path)
    assert not bad, "literal MLflow tag keys (name them in fpn/tags.py):\n" + "\n".join(bad)


def test_the_scan_finds_what_it_looks_for(tmp_path):
    probe = ROOT / "tune" / "_tag_probe_for_test.py"
    probe.write_text(
        'def f(client, run, split):\n'
        '    client.set_tag(run, "fpn.status", "x")\n'
        '    client.search_runs([], filter_string="tags.`mlflow.parentRunId` = \'r\'")\n'
        '    client.set_model_version_tag("m", "1", "ratio", "1")\n'
        '    return {f"fpn.{split}_x": 1}, "fpn.models"\n')
    try:
        found = _problems(probe)
    finally:
        probe.unlink()
    assert len(found) == 4, found  # the module path "fpn.models" is not a tag
