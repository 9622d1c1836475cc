"""Training time of book.tokenizer.BPETokenizer on Python's documentation (chapter 14).

    python benchmarks/bench_tokenizer.py [--sizes 512 2048] [--straightforward 512]

Times BPETokenizer.train on the whole corpus (all of pydoc_data.topics, keys sorted, values joined)
at each size, and, for --straightforward, the trainer that recounts every pair after each merge
(the rule as written), checking that both learn the same merges. Prints the load average at the start,
and the CPU time beside the wall time, since a busy machine stretches the latter.
"""
import argparse
import time
from collections import Counter

from book.tokenizer import BPETokenizer, documentation_text


def straightforward_train(text, vocab_size):
    ids, merges = list(text.encode("utf-8")), []
    while 256 + len(merges) < vocab_size:
        counts = Counter(zip(ids, ids[1:]))
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        new_id = 256 + len(merges)
        merges.append((pair, new_id))
        out, i, n = [], 0, len(ids)
        while i < n:
            if i + 1 < n and ids[i] == pair[0] and ids[i + 1] == pair[1]:
                out.append(new_id)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        ids = out
    return merges


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--straightforward", type=int, nargs="*", default=[512])
    args = parser.parse_args()
    with open("/proc/loadavg") as f:
        print("load average at the start:", f.read().split()[:3])
    text = documentation_text()
    print(f"corpus: {len(text):,} characters, {len(text.encode('utf-8')):,} bytes")
    fast = {}
    for size in sorted(set(args.sizes) | set(args.straightforward)):
        start, cpu = time.perf_counter(), time.process_time()
        fast[size] = BPETokenizer.train(text, size)
        print(f"incremental     vocab {size:5}: {time.perf_counter() - start:6.1f} s "
              f"({time.process_time() - cpu:.1f} s of CPU)")
    for size in args.straightforward:
        start, cpu = time.perf_counter(), time.process_time()
        merges = straightforward_train(text, size)
        print(f"straightforward vocab {size:5}: {time.perf_counter() - start:6.1f} s "
              f"({time.process_time() - cpu:.1f} s of CPU); "
              f"same merges: {merges == fast[size].merges}")


if __name__ == "__main__":
    main()
