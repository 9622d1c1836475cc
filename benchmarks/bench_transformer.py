"""Training-step speed of our Transformer against torch.nn.Transformer, and FLOP throughput.

Both models have the same size, the same weights (copied from ours), the same
dropout, the same batch and the same optimizer (Adam). A training step is
forward, cross-entropy loss, backward and the optimizer step. The two models
take turns, in alternating order, in one process, so that a change in the
machine's load hits both; the reported ratio is the median of the per-round
ratios, and its spread shows how noisy the machine was.

The default size is chapter 8's run (book.train.TrainConfig), trained on one of
its batches of dates (book.data); --src-len and --tgt-len switch to a batch of
random token ids of those lengths instead, for other sizes.

The throughput is the number of floating-point operations of one step (counted
by torch.utils.flop_counter.FlopCounterMode: matrix products, forward and
backward) divided by the step time, as a fraction of this machine's rate on a
large square matrix product, measured in the same rounds.

    python benchmarks/bench_transformer.py                 # chapter 8's size
    python benchmarks/bench_transformer.py --threads 1 --rounds 30
    python benchmarks/bench_transformer.py --d-model 128 --heads 8 --layers 3 --d-ff 512 --src-len 30 --tgt-len 12
    python benchmarks/bench_transformer.py --help
"""
import argparse
import platform
import statistics
import time

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from book.data import batch_for_step, date_tokenizer, split_dates
from book.train import TrainConfig
from book.transformer import TorchReference, Transformer, TransformerConfig

CHAPTER_8 = TrainConfig()  # the training chapter's default run: the benchmark's default size


def make_batch(args, generator):
    """The batch every step trains on, (src, tgt_in, tgt_out): chapter 8's dates, or random ids."""
    if args.src_len is None:
        # Batch 1 of chapter 8's run: real dates in random formats, padded to the longest.
        batch = batch_for_step(split_dates().train, date_tokenizer(), args.batch, args.seed, step=1)
        return batch.src, batch.tgt_in, batch.tgt_out
    # Random token ids with some padding at the end, like a batch of real sentences.
    src = torch.randint(1, args.vocab, (args.batch, args.src_len), generator=generator)
    tgt = torch.randint(1, args.vocab, (args.batch, args.tgt_len + 1), generator=generator)
    src_lengths = torch.randint(args.src_len // 2, args.src_len + 1, (args.batch,), generator=generator)
    tgt_lengths = torch.randint(args.tgt_len // 2, args.tgt_len + 2, (args.batch,), generator=generator)
    src[torch.arange(args.src_len) >= src_lengths[:, None]] = 0
    tgt[torch.arange(args.tgt_len + 1) >= tgt_lengths[:, None]] = 0
    return src, tgt[:, :-1], tgt[:, 1:]


def make_step(model, batch, vocab):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    src, tgt_in, tgt_out = batch

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = model(src, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, vocab), tgt_out.reshape(-1), ignore_index=0)
        loss.backward()
        optimizer.step()
        return loss

    return step


def make_matmul(size):
    a, b = torch.randn(size, size), torch.randn(size, size)
    return lambda: a @ b, 2 * size**3


def seconds_per_call(fn, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def count_flops(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matrix_products(fn):
    """The matrix products one call of fn performs: a replay function and its FLOPs.

    The profiler records the shapes of every mm, addmm and bmm; the replay runs
    the same products on fresh contiguous tensors and nothing else, which shows
    how fast the step could be if everything but its matrix products were free.
    """
    with torch.profiler.profile(record_shapes=True) as prof:
        fn()
    calls, flops = [], 0
    for event in prof.events():
        shapes = [tuple(s) for s in event.input_shapes if s]
        if event.name == "aten::mm":
            (m, k), (_, n) = shapes
            calls.append((torch.mm, [torch.randn(m, k), torch.randn(k, n)]))
            flops += 2 * m * k * n
        elif event.name == "aten::addmm":
            bias, (m, k), (_, n) = shapes
            calls.append((torch.addmm, [torch.randn(bias), torch.randn(m, k), torch.randn(k, n)]))
            flops += 2 * m * k * n
        elif event.name == "aten::bmm":
            (b, m, k), (_, _, n) = shapes
            calls.append((torch.bmm, [torch.randn(b, m, k), torch.randn(b, k, n)]))
            flops += 2 * b * m * k * n

    def replay():
        for op, tensors in calls:
            op(*tensors)

    return replay, flops


def add_size_arguments(parser):
    """The model and batch sizes every benchmark script takes; the defaults are chapter 8's run."""
    parser.add_argument("--d-model", type=int, default=CHAPTER_8.d_model)
    parser.add_argument("--heads", type=int, default=CHAPTER_8.num_heads)
    parser.add_argument("--layers", type=int, default=CHAPTER_8.num_layers)
    parser.add_argument("--d-ff", type=int, default=CHAPTER_8.d_ff)
    parser.add_argument("--dropout", type=float, default=CHAPTER_8.dropout)
    parser.add_argument("--batch", type=int, default=CHAPTER_8.batch_size)
    parser.add_argument("--src-len", type=int, default=None,
                        help="train on random token ids of this source length (default: chapter 8's dates)")
    parser.add_argument("--tgt-len", type=int, default=None, help="target length of the random batch")
    parser.add_argument("--vocab", type=int, default=None,
                        help="vocabulary of the random batch (default: that of chapter 8's dates)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)


def parse_sizes(parser, argv=None):
    """parser.parse_args, then fill in what chapter 8's data decides: the vocabulary."""
    args = parser.parse_args(argv)
    if (args.src_len is None) != (args.tgt_len is None):
        parser.error("--src-len and --tgt-len go together (a random batch), or neither (chapter 8's dates)")
    dates_vocab = len(date_tokenizer())
    if args.vocab is None:
        args.vocab = dates_vocab
    elif args.src_len is None and args.vocab != dates_vocab:
        parser.error(f"chapter 8's dates need --vocab {dates_vocab}; pass --src-len and --tgt-len too")
    return args


def build_models(args):
    """Our Transformer and torch's, same weights, in training mode: (ours, reference)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = TransformerConfig(args.vocab, args.vocab, d_model=args.d_model, num_heads=args.heads,
                               num_layers=args.layers, d_ff=args.d_ff, dropout=args.dropout,
                               max_len=max(128, args.src_len or 0, args.tgt_len or 0))
    ours = Transformer(config).train()
    return ours, TorchReference(config).copy_from(ours).train()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser)
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds; each runs both models")
    parser.add_argument("--steps", type=int, default=5, help="training steps per model and round")
    parser.add_argument("--matmul-size", type=int, default=2048)
    args = parse_sizes(parser, argv)

    ours, reference = build_models(args)
    batch = make_batch(args, torch.Generator().manual_seed(args.seed))
    steps = {"ours": make_step(ours, batch, args.vocab), "torch": make_step(reference, batch, args.vocab)}
    matmul, matmul_flops = make_matmul(args.matmul_size)

    flops = {name: count_flops(step) for name, step in steps.items()}
    products, product_flops = matrix_products(steps["ours"])
    for _ in range(3):  # warm-up: allocator, thread pool, Adam state
        for step in steps.values():
            step()
        matmul()

    times = {"ours": [], "torch": [], "matmul": [], "products": []}
    for round_ in range(args.rounds):
        order = ["ours", "torch"] if round_ % 2 == 0 else ["torch", "ours"]
        for name in order:
            times[name].append(seconds_per_call(steps[name], args.steps))
        times["matmul"].append(seconds_per_call(matmul, 3))
        times["products"].append(seconds_per_call(products, 3))

    ratios = sorted(o / t for o, t in zip(times["ours"], times["torch"]))
    median = {name: statistics.median(values) for name, values in times.items()}
    matmul_rate = matmul_flops / min(times["matmul"])  # the machine's best large-matmul rate
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    data = "chapter 8's dates" if args.src_len is None else "random ids"
    print(f"size: d_model={args.d_model} heads={args.heads} layers={args.layers} d_ff={args.d_ff} "
          f"vocab={args.vocab} dropout={args.dropout}; batch {tuple(batch[0].shape)} -> "
          f"{tuple(batch[1].shape)} of {data}")
    print(f"rounds: {args.rounds} x {args.steps} steps per model")
    print(f"step time (median)  ours {median['ours'] * 1e3:8.1f} ms   torch {median['torch'] * 1e3:8.1f} ms")
    print(f"ratio ours/torch    median {statistics.median(ratios):.3f}   "
          f"quartiles {quartiles[0]:.3f}..{quartiles[2]:.3f}   range {ratios[0]:.3f}..{ratios[-1]:.3f}")
    print(f"FLOPs per step      ours {flops['ours'] / 1e9:.3f} G   torch {flops['torch'] / 1e9:.3f} G")
    print(f"matmul {args.matmul_size}^2: best {matmul_rate / 1e9:.1f} GFLOP/s, "
          f"median {matmul_flops / median['matmul'] / 1e9:.1f} GFLOP/s")
    # Both models do the same useful work; torch's count can differ a little when it picks a
    # fused attention kernel (counted differently), so both rates use our count.
    for name in ("ours", "torch"):
        rate = flops["ours"] / median[name]
        print(f"throughput {name:5s}    {rate / 1e9:6.1f} GFLOP/s = {rate / matmul_rate:.1%} of the matmul rate")
    rate = product_flops / median["products"]
    print(f"ceiling: the step's own matrix products alone take {median['products'] * 1e3:.1f} ms "
          f"({median['products'] / median['ours']:.0%} of our step), {rate / 1e9:.1f} GFLOP/s "
          f"= {rate / matmul_rate:.1%} of the matmul rate")


if __name__ == "__main__":
    main()
