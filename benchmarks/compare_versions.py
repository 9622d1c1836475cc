"""Before and after a change: a training step of two versions of the book's Transformer and of torch's.

bench_transformer.py compares our model with torch.nn.Transformer. To see what a change to our
code costs, this script loads a second copy of the package, the code before the change, under
another name, builds both versions and TorchReference with the same weights, and times a
training step of each in turn, in rotating order, in one process, as bench_transformer.py
does for two models: a change in the machine's load hits all three alike.

Make the old copy from git, with its imports renamed, then run:

    mkdir -p /tmp/old && git archive HEAD~1 book | tar -x -C /tmp/old
    mv /tmp/old/book /tmp/old/book_old
    sed -i 's/from book\\./from book_old./; s/import book\\./import book_old./' /tmp/old/book_old/*.py
    PYTHONPATH=/tmp/old python benchmarks/compare_versions.py --old book_old --threads 1
"""
import argparse
import importlib
import statistics

import torch

import bench_transformer as bench


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_size_arguments(parser)
    parser.add_argument("--old", required=True, help="the package name of the old copy, e.g. book_old")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3)
    args = bench.parse_sizes(parser, argv)

    ours, reference = bench.build_models(args)
    old_module = importlib.import_module(f"{args.old}.transformer")
    old = old_module.Transformer(old_module.TransformerConfig(**vars(ours.config))).train()
    old.load_state_dict(ours.state_dict())
    batch = bench.make_batch(args, torch.Generator().manual_seed(args.seed))
    models = {"new": ours, "old": old, "torch": reference}
    steps = {name: bench.make_step(model, batch, args.vocab) for name, model in models.items()}
    for _ in range(3):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    names = list(steps)
    for round_ in range(args.rounds):
        for name in names[round_ % 3:] + names[:round_ % 3]:
            times[name].append(bench.seconds_per_call(steps[name], args.steps))

    def ratios(a, b):
        values = sorted(x / y for x, y in zip(times[a], times[b]))
        q = statistics.quantiles(values, n=4)
        return f"median {statistics.median(values):.3f}   quartiles {q[0]:.3f}..{q[2]:.3f}"

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.rounds} rounds x {args.steps} steps")
    print("step time (median)  " + "   ".join(f"{n} {statistics.median(t) * 1e3:.1f} ms" for n, t in times.items()))
    print(f"new / torch   {ratios('new', 'torch')}")
    print(f"old / torch   {ratios('old', 'torch')}")
    print(f"new / old     {ratios('new', 'old')}")


if __name__ == "__main__":
    main()
