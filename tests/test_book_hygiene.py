"""Guards of the book itself: package in sync, notebooks executed, chapter imports in order."""
import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
sys.path.insert(0, str(ROOT / "tools"))
import export  # noqa: E402


def load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def source(cell):
    return "".join(cell["source"])


def test_there_are_chapters():
    assert CHAPTERS, "no notebooks in chapters/"


def test_package_matches_export_cells():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "export.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_export_check_detects_a_stale_module(tmp_path):
    # The check must be able to fail: in a copy of the tree, edit a generated module.
    shutil.copytree(ROOT / "chapters", tmp_path / "chapters")
    shutil.copytree(ROOT / "book", tmp_path / "book", ignore=shutil.ignore_patterns("__pycache__"))
    generated = sorted(export.modules_from_notebooks(tmp_path))
    assert generated, "no export cells found"
    assert export.main(["--check"], root=tmp_path) == 0
    path = tmp_path / generated[0]
    path.write_text(path.read_text(encoding="utf-8") + "\n# a stray edit\n", encoding="utf-8")
    assert export.main(["--check"], root=tmp_path) == 1
    assert export.main([], root=tmp_path) == 0  # regenerating repairs it
    assert export.main(["--check"], root=tmp_path) == 0


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_notebook_executed_top_to_bottom(path):
    nb = load(path)
    cells = [c for c in code_cells(nb) if source(c).strip()]
    counts = [c["execution_count"] for c in cells]
    assert None not in counts, f"{path.name}: {counts.count(None)} code cell(s) never executed"
    assert counts == list(range(1, len(cells) + 1)), f"{path.name}: execution counts {counts} are not 1..N"
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: stored error output {errors[0].get('ename')}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_notebook_names_its_module(path):
    nb = load(path)
    module = nb["metadata"].get("book", {}).get("module", "")
    assert re.fullmatch(r"book/\w+\.py", module), f"{path.name}: metadata book.module is {module!r}"
    assert any("export" in c.get("metadata", {}).get("tags", []) for c in code_cells(nb))


def test_toc_lists_the_chapters_in_order():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = [e["file"] for e in toc["chapters"] if e["file"].startswith("chapters/")]
    assert listed == [f"chapters/{p.stem}" for p in CHAPTERS]


def _chapter_modules():
    """[(chapter path, module name)] in reading order, e.g. (.., 'attention')."""
    result = []
    for path in CHAPTERS:
        nb = load(path)
        modules = {Path(nb["metadata"]["book"]["module"]).stem}
        for cell in code_cells(nb):
            for tag in cell.get("metadata", {}).get("tags", []):
                if tag.startswith("export:"):
                    modules.add(tag.split(":", 1)[1])
        result.append((path, modules))
    return result


def _names_defined(tree):
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _parse(cell):
    # IPython magics are not Python; drop those lines before parsing.
    text = "\n".join(line for line in source(cell).splitlines() if not line.lstrip().startswith(("%", "!")))
    return ast.parse(text)


def test_chapters_import_only_from_earlier_chapters():
    order = _chapter_modules()
    available = set()
    for path, own in order:
        for cell in code_cells(load(path)):
            for node in ast.walk(_parse(cell)):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "book":
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names] if node.module == "book" else [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names if a.name.split(".")[0] == "book"]
                for name in names:
                    parts = name.split(".")
                    if len(parts) < 2:
                        continue
                    module = parts[1]
                    assert module in available, f"{path.name} imports book.{module}, not built by an earlier chapter"
        available |= own


def test_no_chapter_redefines_an_exported_name():
    exported_before = {}
    for path, _ in _chapter_modules():
        nb = load(path)
        for cell in code_cells(nb):
            for name in _names_defined(_parse(cell)):
                assert name not in exported_before, (
                    f"{path.name} redefines {name}, exported by {exported_before[name]}; import it instead"
                )
        for cell in code_cells(nb):
            if export.export_target(cell, "book/x.py"):
                for name in _names_defined(_parse(cell)):
                    if not name.startswith("_"):
                        exported_before.setdefault(name, path.name)
