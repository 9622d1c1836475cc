"""Dates per second: greedy decoding recomputing every step (chapter 8), with the key/value cache, and beam 4.

    python benchmarks/bench_decoding.py [--steps 1000] [--dates 3000] [--rounds 3] [--threads N]

Trains chapter 8's model (book.train.TrainConfig) for --steps steps, then reads the first --dates
test dates with each decoder, in batches of 500, --rounds times in alternating order; reports the
median dates per second of each and the exact match. Training weights do not change the speed of
greedy decoding, but they decide when answers end and how beam search prunes.
"""
import argparse
import dataclasses
import statistics
import time

import torch

from book.data import batch_for_step, date_tokenizer, examples_for, split_dates
from book.decoding import beam_search, greedy_decode
from book.train import TrainConfig, build_model, make_optimizer, train
from book.train import greedy_decode as recompute_greedy_decode


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    parser.add_argument("--dates", type=int, default=3000, help="test dates to read (default 3000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer, split = date_tokenizer(), split_dates()
    settings = dataclasses.replace(TrainConfig(), steps=args.steps, eval_every=args.steps)
    model = build_model(settings, tokenizer)
    started = time.perf_counter()
    train(model, make_optimizer(model),
          lambda step: batch_for_step(split.train, tokenizer, settings.batch_size, settings.seed, step),
          settings, progress=False)
    print(f"trained {args.steps} steps in {time.perf_counter() - started:.0f} s; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    model.eval()
    examples = examples_for(split.test)[: args.dates]
    batches = [tokenizer.encode_batch([ex.source for ex in examples[i:i + 500]]) for i in range(0, len(examples), 500)]
    start, end = tokenizer.start_id, tokenizer.end_id
    decoders = {
        "greedy, recomputing": lambda src: recompute_greedy_decode(model, src, 16, start, end),
        "greedy, cached": lambda src: greedy_decode(model, src, 16, start, end),
        "beam 4 (alpha 0.6)": lambda src: beam_search(model, src, 16, start, end, 4, 0.6)[0],
    }
    rates = {name: [] for name in decoders}
    accuracy = {}
    for r in range(args.rounds):
        order = list(decoders) if r % 2 == 0 else list(reversed(decoders))
        for name in order:
            started = time.perf_counter()
            answers = [a for src in batches for a in tokenizer.decode_batch(decoders[name](src))]
            rates[name].append(len(examples) / (time.perf_counter() - started))
            accuracy[name] = sum(a == ex.target for a, ex in zip(answers, examples)) / len(examples)
    base = statistics.median(rates["greedy, recomputing"])
    print(f"{'decoder':22} {'dates/s':>9} {'vs recomputing':>15} {'exact match':>12}")
    for name in decoders:
        rate = statistics.median(rates[name])
        print(f"{name:22} {rate:9.0f} {rate / base:14.2f}x {100 * accuracy[name]:11.2f}%")


if __name__ == "__main__":
    main()
