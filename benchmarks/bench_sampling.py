"""Sampling speed of book.sampling.sample with the key/value cache against recomputing the prefix (chapter 14).

    python benchmarks/bench_sampling.py [--lengths 16 128 512] [--rounds 3] [--threads N]

The model is the command line's text GPT (book.tokenizer.TEXT_TASK's sizes, 1,025 ids) with room for
a 16-token prompt and 512 new tokens; untrained weights, which do not change the speed. One row,
temperature 1; reports the median tokens per second over --rounds of each, run alternately.
"""
import argparse
import statistics
import time

import torch

from book.gpt import GPT, GPTConfig
from book.sampling import sample
from book.tokenizer import TEXT_TASK


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 128, 512])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with open("/proc/loadavg") as f:
        print("load average at the start:", f.read().split()[:3], "threads:", torch.get_num_threads())
    s = TEXT_TASK.settings
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1025, d_model=s.d_model, num_heads=s.num_heads, num_layers=s.num_layers,
                          d_ff=s.d_ff, dropout=0.0, max_len=16 + max(args.lengths), pad_id=1024)).eval()
    prompt = torch.randint(0, 1024, (1, 16))
    for n in args.lengths:
        times = {True: [], False: []}
        for _ in range(args.rounds):
            for cache in (True, False):
                start = time.perf_counter()
                sample(model, prompt, n, generator=torch.Generator().manual_seed(0), cache=cache)
                times[cache].append(time.perf_counter() - start)
        cached, recomputed = (n / statistics.median(times[c]) for c in (True, False))
        print(f"{n:4} new tokens: cache {cached:7.1f} tokens/s, recomputing {recomputed:7.1f} tokens/s, "
              f"x{cached / recomputed:.1f}")


if __name__ == "__main__":
    main()
