"""How long each chapter takes to execute, top to bottom, against the book's budgets.

    python benchmarks/book_time.py [chapters/08_training.ipynb ...]

Runs every chapter (or the ones named) in a fresh kernel, in order, the way a reader's
"Run all" does, without writing anything back: the stored notebooks are not touched. Prints
the seconds of each chapter, the total, the load average before and after each one (a busy
machine is slower), and whether each chapter stays within 4 minutes and the book within 12.
"""
import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from execute import run  # noqa: E402  (the same fresh-kernel execution as tools/execute.py, without writing back)

CHAPTER_BUDGET, BOOK_BUDGET = 4 * 60, 12 * 60


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every chapters/*.ipynb")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or sorted((ROOT / "chapters").glob("*.ipynb"))
    total = 0.0
    print(f"{'chapter':28} {'seconds':>8}  load before/after  within 4 min")
    for path in paths:
        before = os.getloadavg()[0]
        _, seconds = run(path, timeout=900)
        total += seconds
        print(f"{path.stem:28} {seconds:8.1f}  {before:5.2f} / {os.getloadavg()[0]:5.2f}     "
              f"{'yes' if seconds <= CHAPTER_BUDGET else 'NO'}", flush=True)
    print(f"{'total':28} {total:8.1f}  within 12 min: {'yes' if total <= BOOK_BUDGET else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
