"""Where does a training step spend its time? torch.profiler tables for our model and torch's.

Same sizes, weights, batch and optimizer as bench_transformer.py; prints the
operators with the most self time, for each model. Use it to find what to
optimize when the ratio of bench_transformer.py goes above 1.

    python benchmarks/profile_step.py --threads 1
    python benchmarks/profile_step.py --rows 30 --steps 10
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import bench_transformer as bench
from book.transformer import TorchReference, Transformer, TransformerConfig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--d-ff", type=int, default=512)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--vocab", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--src-len", type=int, default=30)
    parser.add_argument("--tgt-len", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = TransformerConfig(args.vocab, args.vocab, d_model=args.d_model, num_heads=args.heads,
                               num_layers=args.layers, d_ff=args.d_ff, dropout=args.dropout,
                               max_len=max(args.src_len, args.tgt_len))
    ours = Transformer(config).train()
    models = {"ours": ours, "torch": TorchReference(config).copy_from(ours).train()}
    batch = bench.make_batch(args, torch.Generator().manual_seed(args.seed))
    for name, model in models.items():
        step = bench.make_step(model, batch, args.vocab)
        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step()
        print(f"\n=== {name}: {args.steps} training steps ===")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
