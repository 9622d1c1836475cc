"""Why chapter 7's Embedding calls F.embedding instead of indexing the table, weight[tokens].

Both return the same rows, and both give a dense (V, D) gradient. What differs is how the
backward pass adds up the gradients of a token that occurs several times: F.embedding's
backward adds them in a fixed order, while indexing's backward (index_put_ with
accumulate=True) may add them in a different order on each call when PyTorch uses several
threads, so the gradient's last bits can change from one identical step to the next.

This script runs the same forward and backward pass --repeats times with each form, on a batch
of chapter 8's size (128 x 29 ids from 61 tokens, width 64), and counts the distinct gradients
each form produced (1 = deterministic), and times each form.

    python benchmarks/embedding_determinism.py
    python benchmarks/embedding_determinism.py --threads 1
"""
import argparse
import time

import torch
from torch.nn import functional as F


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--vocab", type=int, default=61)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--length", type=int, default=29)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weight = torch.randn(args.vocab, args.d_model, requires_grad=True)
    tokens = torch.randint(0, args.vocab, (args.batch, args.length))
    upstream = torch.randn(args.batch, args.length, args.d_model)
    forms = {"F.embedding(tokens, weight)": lambda: F.embedding(tokens, weight),
             "weight[tokens]": lambda: weight[tokens]}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; tokens {tuple(tokens.shape)} "
          f"from {args.vocab}, width {args.d_model}, {args.repeats} repeats")
    gradients = {}
    for name, form in forms.items():
        seen = set()
        start = time.perf_counter()
        for _ in range(args.repeats):
            weight.grad = None
            form().backward(upstream)
            seen.add(weight.grad.numpy().tobytes())
        elapsed = (time.perf_counter() - start) / args.repeats
        gradients[name] = weight.grad.clone()
        print(f"{name:28s} distinct gradients: {len(seen):3d}   {elapsed * 1e6:8.0f} us per forward + backward")
    a, b = gradients.values()
    print(f"largest difference between the two forms' gradients: {(a - b).abs().max().item():.1e}")


if __name__ == "__main__":
    main()
