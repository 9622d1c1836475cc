"""Re-execute notebooks in place, top to bottom, the same way every time.

    python tools/execute.py chapters/02_attention.ipynb   # one chapter
    python tools/execute.py                                # every chapter, in order

The package is exported first, so a chapter runs against the current code of
the chapters before it. Outputs are written atomically; a notebook that
raises is left untouched and the command exits non-zero.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import export  # noqa: E402


def run(path, timeout):
    """Execute the notebook at ``path`` in a fresh kernel; return it, with its outputs, and the seconds taken."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,  # no timestamps in the stored notebook
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def execute(path, timeout):
    nb, seconds = run(path, timeout)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)
    # mkstemp creates the file private (0600); give it the usual permissions.
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every chapters/*.ipynb")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell (default 900)")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or sorted((ROOT / "chapters").glob("*.ipynb"))
    if export.main([]) != 0:
        return 1
    failed = 0
    for path in paths:
        try:
            seconds = execute(path, args.timeout)
        except CellExecutionError as exc:
            failed += 1
            print(f"{path.name}: FAILED\n{exc}", file=sys.stderr)
            continue
        print(f"{path.name}: executed in {seconds:.1f} s")
        # A chapter's own exports may have changed what later chapters import.
        export.main([])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
