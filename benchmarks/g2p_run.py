"""The default pronounce run (chapter 13): train it, time it, score it, time its decoding.

    python benchmarks/g2p_run.py [--out g2p.pt] [--skip-training] [-- extra options for python -m book train]

Runs `python -m book train --task pronounce --out g2p.pt` (the defaults of book.pronounce.PRONOUNCE_TASK)
unless --skip-training, and reports its wall time and the load average before and after; then, on the
6,216 test words of the fixed split (or the 6,265 validation words, --words valid), WER and PER with stress kept and stripped, greedy (chapter 9's
cached greedy_decode) and beam 4, and how long decoding the whole test set takes each way (one thread
and the default thread count of this machine).
"""
import argparse
import os
import subprocess
import sys
import time

import torch

from book.cli import PAIRS_KIND, load_checkpoint, translator_from_checkpoint
from book.pronounce import PRONOUNCE_TASK, error_rates, pronounce


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="g2p.pt")
    parser.add_argument("--skip-training", action="store_true", help="score an existing checkpoint")
    parser.add_argument("--words", choices=("test", "valid"), default="test",
                        help="which held-out words to score (choose settings on valid, report test)")
    parser.add_argument("extra", nargs="*", help="more options for python -m book train (after --)")
    args = parser.parse_args()
    if not args.skip_training:
        print(f"load average before training: {load_average()}", flush=True)
        began = time.perf_counter()
        times = os.times()
        subprocess.run([sys.executable, "-m", "book", "train", "--task", "pronounce", "--out", args.out, "--quiet",
                        *args.extra], check=True)
        after = os.times()
        print(f"training: {time.perf_counter() - began:.0f} s of wall time, "
              f"{after.children_user - times.children_user:.0f} s user CPU; load average after: {load_average()}")
    state = load_checkpoint(args.out, kind=PAIRS_KIND)
    model, letters, phones, settings = translator_from_checkpoint(state, args.out)
    model.eval()
    print(f"model: {settings}, norm_first={model.config.norm_first}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, step {state['step']}")
    split = PRONOUNCE_TASK.data()[0]
    held_out = getattr(split, args.words)
    words = sorted(held_out)
    refs = [held_out[w] for w in words]
    threads = torch.get_num_threads()
    for name, beam in (("greedy", 1), ("beam 4", 4)):
        for n in sorted({1, threads}):
            torch.set_num_threads(n)
            began = time.perf_counter()
            answers = pronounce(model, letters, phones, words, beam_size=beam)
            seconds = time.perf_counter() - began
            print(f"{name}, {n} thread(s): {len(words):,} {args.words} words decoded in {seconds:.1f} s "
                  f"({1000 * seconds / len(words):.2f} ms a word)")
        torch.set_num_threads(threads)
        (wer, per), (wer_s, per_s) = error_rates(answers, refs), error_rates(answers, refs, stress=False)
        print(f"{name}: WER {100 * wer:.1f}%, PER {100 * per:.2f}%; stress stripped: WER {100 * wer_s:.1f}%, "
              f"PER {100 * per_s:.2f}%")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
