"""Write the ``book`` package from the notebooks' ``export`` cells.

A code cell tagged ``export`` goes to the module named in its notebook's
metadata (``"book": {"module": "book/attention.py"}``); a cell tagged
``export:train`` goes to ``book/train.py`` instead, for a chapter that builds
two modules. Each generated module starts with a banner naming its notebook.
Modules without the banner are hand-written and never touched.

    python tools/export.py           # write book/ from chapters/
    python tools/export.py --check   # exit 1 if book/ differs from the notebooks
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BANNER = "# Generated from {source} by tools/export.py: edit the notebook, not this file.\n"
BANNER_PREFIX = "# Generated from "


def export_target(cell, default_module):
    """The module a cell exports to, or None when it is not an export cell."""
    for tag in cell.get("metadata", {}).get("tags", []):
        if tag == "export":
            return default_module
        if tag.startswith("export:"):
            return f"book/{tag.split(':', 1)[1]}.py"
    return None


def modules_from_notebooks(root=ROOT):
    """{relative module path: source text} for every export cell under chapters/."""
    sources = {}  # module -> (notebook, [cell sources])
    for notebook in sorted((root / "chapters").glob("*.ipynb")):
        nb = json.loads(notebook.read_text(encoding="utf-8"))
        default = nb.get("metadata", {}).get("book", {}).get("module")
        rel_nb = notebook.relative_to(root).as_posix()
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            target = export_target(cell, default)
            if target is None:
                continue
            if not target:
                sys.exit(f"{rel_nb}: a cell is tagged 'export' but the notebook metadata names no book.module")
            owner, cells = sources.setdefault(target, (rel_nb, []))
            if owner != rel_nb:
                sys.exit(f"{target} is exported by both {owner} and {rel_nb}; one module, one chapter")
            cells.append("".join(cell["source"]).strip("\n"))
    return {
        module: BANNER.format(source=notebook) + "\n\n\n".join(cells) + "\n"
        for module, (notebook, cells) in sources.items()
    }


def is_generated(path):
    with open(path, encoding="utf-8") as f:
        return f.readline().startswith(BANNER_PREFIX)


def write_atomic(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    # mkstemp creates the file private (0600); give it the usual permissions.
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv=None, root=ROOT):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="report differences, write nothing")
    args = parser.parse_args(argv)

    wanted = modules_from_notebooks(root)
    problems = []
    for module, text in sorted(wanted.items()):
        path = root / module
        if path.exists() and not is_generated(path):
            problems.append(f"{module}: hand-written (no banner), refusing to overwrite it")
        elif not path.exists() or path.read_text(encoding="utf-8") != text:
            if args.check:
                problems.append(f"{module}: differs from its notebook's export cells")
            else:
                write_atomic(path, text)
                print(f"wrote {module}")
    for path in sorted((root / "book").glob("*.py")):
        module = path.relative_to(root).as_posix()
        if module not in wanted and is_generated(path):
            message = f"{module}: generated, but no notebook exports it any more"
            if args.check:
                problems.append(message)
            else:
                print(f"warning: {message}", file=sys.stderr)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
