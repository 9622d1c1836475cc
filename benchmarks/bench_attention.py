"""Memory and time of self-attention against the sequence length.

Our MultiHeadAttention (chapter 5) computes the full (B, h, T, T) matrix of
scores and keeps the weights, so its memory grows like T^2. torch's
nn.MultiheadAttention with need_weights=False calls a fused kernel that never
stores the whole matrix. For each length, one forward and backward pass runs in
a fresh process, which reports its time and the growth of its peak resident
memory (ru_maxrss) over a warmed-up baseline, so that one measurement cannot
inherit memory from another.

    python benchmarks/bench_attention.py
    python benchmarks/bench_attention.py --lengths 64 256 1024 --batch 2 --threads 1
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from book.attention import causal_mask
from book.multi_head import MultiHeadAttention


def build(impl, d_model, heads):
    if impl == "ours":
        module = MultiHeadAttention(d_model, heads)
        return lambda x, mask: module(x, x, x, mask)
    module = nn.MultiheadAttention(d_model, heads, batch_first=True)
    # is_causal with a mask lets torch pick its fused causal kernel.
    return lambda x, mask: module(x, x, x, attn_mask=~mask, need_weights=False, is_causal=True)[0]


def run_once(fn, x, mask):
    out = fn(x, mask)
    out.sum().backward()
    x.grad = None


def worker(impl, length, args):
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fn = build(impl, args.d_model, args.heads)
    small = torch.randn(args.batch, 8, args.d_model, requires_grad=True)
    run_once(fn, small, causal_mask(8))  # load kernels, warm the allocator
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    x = torch.randn(args.batch, length, args.d_model, requires_grad=True)
    mask = causal_mask(length)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run_once(fn, x, mask)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"seconds": statistics.median(times), "peak_mib": (peak - baseline) / 1024}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args)
        return

    print(f"torch {torch.__version__}; self-attention with a causal mask, forward + backward; "
          f"batch={args.batch} d_model={args.d_model} heads={args.heads}")
    print(f"{'T':>6} {'one (B,h,T,T) fp32':>19} | {'ours ms':>9} {'ours MiB':>9} | {'torch ms':>9} {'torch MiB':>9}")
    passthrough = [a for a in sys.argv[1:] if a != "--worker"]
    for length in args.lengths:
        row = {}
        for impl in ("ours", "torch"):
            command = [sys.executable, __file__, *passthrough, "--worker", impl, str(length)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            row[impl] = json.loads(result.stdout.strip().splitlines()[-1])
        matrix_mib = args.batch * args.heads * length**2 * 4 / 2**20
        print(f"{length:>6} {matrix_mib:>15.1f} MiB | {row['ours']['seconds'] * 1e3:>9.1f} "
              f"{row['ours']['peak_mib']:>9.1f} | {row['torch']['seconds'] * 1e3:>9.1f} {row['torch']['peak_mib']:>9.1f}")


if __name__ == "__main__":
    main()
