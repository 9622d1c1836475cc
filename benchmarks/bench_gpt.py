"""Chapter 11's two layouts on the clock: training steps per second, and GPT decoding with and without its cache.

    python benchmarks/bench_gpt.py [--rounds 5] [--steps 20] [--dates 1000] [--threads N] [--layers L]

Builds chapter 8's encoder-decoder (book.train.TrainConfig) and chapter 11's GPTTranslator of the same
width with as many blocks as each of its two stacks (--layers L for another number of blocks). Times
--steps training steps of each on chapter 8's batches, alternating the order over --rounds rounds,
and reports the median time per step and the forward FLOPs of one batch (torch.utils.flop_counter). Then reads the first --dates test dates with the
GPT, with book.gpt.generate cache=True and cache=False, and reports dates per second; an end id the model
can never write (-1) makes every answer 16 tokens long, so both decoders do the same number of steps.
"""
import argparse
import statistics
import time

import torch

from book.data import batch_for_step, date_tokenizer, examples_for, split_dates
from book.gpt import GPT, GPTConfig, GPTTranslator, generate
from book.train import TrainConfig, build_model, make_optimizer, train_step

import bench_transformer as bench  # its count_flops; run from the repository root, as every benchmark


def comparison_gpt(settings, tokenizer, num_layers=None):
    """Chapter 11's comparison GPT for ``settings``: its width, as many blocks as each of its two
    stacks (or ``num_layers``), seeded."""
    torch.manual_seed(settings.seed)
    return GPTTranslator(GPT(GPTConfig(
        vocab_size=len(tokenizer), d_model=settings.d_model, num_heads=settings.num_heads,
        num_layers=num_layers or settings.num_layers, d_ff=settings.d_ff, dropout=0.0, max_len=64,
        pad_id=tokenizer.pad_id)))


def forward_flops(model, batch):
    with torch.no_grad():
        return bench.count_flops(lambda: model(batch.src, batch.tgt_in))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="training steps timed per model and round")
    parser.add_argument("--dates", type=int, default=1000)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N)")
    parser.add_argument("--layers", type=int, help="blocks of the GPT (default: the chapter's, num_layers)")
    args = parser.parse_args()
    if min(args.rounds, args.steps, args.dates) < 1 or (args.layers is not None and args.layers < 1):
        parser.error("--rounds, --steps, --dates and --layers must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer, split = date_tokenizer(), split_dates()
    settings = TrainConfig()
    models = {"encoder-decoder": build_model(settings, tokenizer)}
    models["decoder-only"] = comparison_gpt(settings, tokenizer, num_layers=args.layers)
    optimizers = {name: make_optimizer(model) for name, model in models.items()}
    batches = [batch_for_step(split.train, tokenizer, settings.batch_size, settings.seed, step)
               for step in range(1, args.steps + 1)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {settings.batch_size}")

    times = {name: [] for name in models}
    for r in range(args.rounds):
        for name in (list(models) if r % 2 == 0 else list(reversed(models))):
            started = time.perf_counter()
            for step, batch in enumerate(batches, start=settings.warmup):  # a step past the warmup: full rate
                train_step(models[name], optimizers[name], batch, step, settings)
            times[name].append((time.perf_counter() - started) / args.steps)
    print(f"{'model':16} {'parameters':>10} {'ms/step':>8} {'steps/s':>8} {'GFLOP/batch':>12}")
    for name, model in models.items():
        ms = 1000 * statistics.median(times[name])
        print(f"{name:16} {sum(p.numel() for p in model.parameters()):10,} {ms:8.1f} {1000 / ms:8.1f} "
              f"{forward_flops(model, batches[0]) / 1e9:12.3f}")
    ratio = statistics.median(times["decoder-only"]) / statistics.median(times["encoder-decoder"])
    print(f"time per step, decoder-only / encoder-decoder: {ratio:.2f}")

    gpt = models["decoder-only"].eval()
    examples = examples_for(split.test)[: args.dates]
    sources = [tokenizer.encode_batch([ex.source for ex in examples[i:i + 500]]) for i in range(0, len(examples), 500)]
    rates = {True: [], False: []}
    for r in range(args.rounds):
        for cache in ((True, False) if r % 2 == 0 else (False, True)):
            started = time.perf_counter()
            for src in sources:
                generate(gpt, src, 16, tokenizer.start_id, -1, cache=cache)
            rates[cache].append(len(examples) / (time.perf_counter() - started))
    cached, recomputed = statistics.median(rates[True]), statistics.median(rates[False])
    print(f"GPT decoding, 16 tokens: cached {cached:.0f} dates/s, recomputing {recomputed:.0f} dates/s, "
          f"{cached / recomputed:.1f} times faster")


if __name__ == "__main__":
    main()
