"""Chapter 11's GPT trained with chapter 8's whole budget, with another seed or another number of blocks.

    python benchmarks/gpt_full_budget.py [--seed 0] [--threads N] [--layers L]

Builds the comparison's GPTTranslator (chapter 8's width, as many blocks as each of its two stacks)
and trains it with chapter 8's default run, book.train.TrainConfig(): 1,500 updates of 128
dates, its schedule, cooldown and label smoothing. Prints the validation exact match every 250
updates, the training time, and the exact match on the 3,000 test dates with the wrong answers by
format, and the forward FLOPs per batch of the GPT and of chapter 8's encoder-decoder. Chapter 11
trains seed 0 with 2 blocks; --seed S repeats it with another seed, and --layers L trains a GPT of L
blocks instead (with 4, as many as the encoder and decoder together, it does 1.78 times the
encoder-decoder's arithmetic per batch). Also prints the share of the positions in the training
batches that are real tokens, not padding. Chapter 8's encoder-decoder with the same run: `python -m book train --out M.pt --seed S`.
"""
import argparse
import time

import torch

from book.data import FORMATS, batch_for_step, date_tokenizer, examples_for, split_dates
from book.gpt import generate
from book.train import TrainConfig, build_model, exact_match, make_optimizer, train

from bench_gpt import comparison_gpt, forward_flops  # run from the repository root, as every benchmark


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N)")
    parser.add_argument("--layers", type=int, help="blocks of the GPT (default: the chapter's, num_layers)")
    args = parser.parse_args()
    if args.layers is not None and args.layers < 1:
        parser.error(f"--layers must be at least 1, got {args.layers}")
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer, split = date_tokenizer(), split_dates()
    settings = TrainConfig(seed=args.seed)
    model = comparison_gpt(settings, tokenizer, num_layers=args.layers)
    first = batch_for_step(split.train, tokenizer, settings.batch_size, settings.seed, 1)
    print(f"forward GFLOP per batch of {settings.batch_size}: GPT ({model.config.num_layers} blocks, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters) {forward_flops(model, first) / 1e9:.3f}, "
          f"chapter 8's encoder-decoder {forward_flops(build_model(settings, tokenizer), first) / 1e9:.3f}")
    positions = {"real": 0, "all": 0}  # counted as training draws the batches

    def next_batch(step):
        batch = batch_for_step(split.train, tokenizer, settings.batch_size, settings.seed, step)
        row = torch.cat([batch.src, batch.tgt_in], dim=1)
        positions["real"] += (row != tokenizer.pad_id).sum().item()
        positions["all"] += row.numel()
        return batch

    valid, test = examples_for(split.valid), examples_for(split.test)
    started = time.perf_counter()
    history = train(model, make_optimizer(model), next_batch, settings, progress=False,
                    validate=lambda m: exact_match(m, tokenizer, valid, decode=generate)[0])
    seconds = time.perf_counter() - started
    accuracy, answers = exact_match(model, tokenizer, test, decode=generate)
    wrong = {fmt: sum(a != ex.target for a, ex in zip(answers, test) if ex.format == fmt) for fmt in FORMATS}

    print(f"GPT, seed {settings.seed}, {torch.get_num_threads()} threads: {settings.steps} updates of "
          f"{settings.batch_size} in {seconds:.0f} s ({settings.steps / seconds:.1f} per second, validations included)")
    print(f"real tokens: {100 * positions['real'] / positions['all']:.1f}% of the positions in the training batches")
    print("validation exact match:", ", ".join(f"{step}: {100 * acc:.1f}%" for step, acc in
                                                zip(history["valid_step"], history["valid_accuracy"])))
    print(f"test exact match: {100 * accuracy:.2f}% ({len(test) - round(accuracy * len(test))} wrong of {len(test)})")
    for fmt, n in wrong.items():
        if n:
            print(f"  wrong, {fmt}: {n}")


if __name__ == "__main__":
    main()
