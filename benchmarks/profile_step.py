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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_size_arguments(parser)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20)
    args = bench.parse_sizes(parser, argv)

    ours, reference = bench.build_models(args)
    models = {"ours": ours, "torch": reference}
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
