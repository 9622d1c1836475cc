"""What the command-line tests share: how to run ``python -m book`` in a subprocess, and how to read its errors."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The subprocesses import this checkout's book (installed or not), use one thread each, and are never
# taken for a process of an outer torchrun.
ENV = dict(os.environ, OMP_NUM_THREADS="1",
           PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
ENV.pop("WORLD_SIZE", None)
ENV.pop("RANK", None)


def book_train(out, *args, processes=1, timeout=240):
    """``python -m book train --out out *args``, under torchrun when processes > 1; the CompletedProcess."""
    if processes == 1:
        command = [sys.executable, "-m", "book"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   "-m", "book"]
    return subprocess.run([*command, "train", "--out", str(out), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=ENV, cwd=out.parent)


def one_line_error(code, err, *words):
    """Exit status 2 and exactly one line on stderr, no traceback, holding every one of ``words``."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]
