"""The numbers of a text model trained by `python -m book train --task text` (chapter 14).

    python benchmarks/text_run.py lm.pt [--samples 20] [--new-tokens 100] [--temperature 0.8]

Held-out bits per byte (the last 10% of the documentation) against gzip, bz2 and lzma on the held-out
bytes alone and after the training text (compress training + held-out, subtract the training text
alone); then --samples continuations of --new-tokens tokens at --temperature, each from a 16-token
prompt at a random place of the held-out text, and the share of their words of 3+ letters that occur
in the documentation.
"""
import argparse
import bz2
import gzip
import lzma
import re

import torch

from book.cli import TEXT_KIND, load_checkpoint, text_model_from_checkpoint
from book.sampling import sample
from book.tokenizer import TEXT_TASK, bits_per_byte, split_text


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8)
    args = parser.parse_args()
    with open("/proc/loadavg") as f:
        print("load average at the start:", f.read().split()[:3])
    model, tokenizer, settings = text_model_from_checkpoint(load_checkpoint(args.checkpoint, kind=TEXT_KIND))
    text = TEXT_TASK.read()
    train_text, held_text = split_text(text)
    _, _, held_ids, n_bytes = TEXT_TASK.prepare(text, tokenizer)
    print(f"model: {settings}")
    print(f"held-out bits per byte: {bits_per_byte(model.gpt, held_ids, n_bytes):.3f}")
    train_bytes, held = train_text.encode("utf-8"), held_text.encode("utf-8")
    for name, c in (("gzip", lambda b: gzip.compress(b, 9)), ("bz2", lambda b: bz2.compress(b, 9)),
                    ("lzma", lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME))):
        alone = 8 * len(c(held)) / len(held)
        given = 8 * (len(c(train_bytes + held)) - len(c(train_bytes))) / len(held)
        print(f"{name:5}: alone {alone:.3f}, after the training text {given:.3f} bits per byte")
    doc_words = set(re.findall(r"[A-Za-z]{3,}", text))
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, held_ids.numel() - 16, (args.samples,), generator=g).tolist()
    prompts = torch.stack([held_ids[s:s + 16] for s in starts])
    out = sample(model.gpt, prompts, args.new_tokens, temperature=args.temperature, generator=g)
    words = [w for row in out[:, 16:].tolist() for w in re.findall(r"[A-Za-z]{3,}", TEXT_TASK.write(tokenizer, row))]
    known = sum(w in doc_words for w in words) / len(words)
    print(f"temperature {args.temperature}: {len(words)} words of 3+ letters in {args.samples} samples, "
          f"{100 * known:.1f}% of them words of the documentation")
    print("first sample:", repr(TEXT_TASK.write(tokenizer, out[0].tolist())))


if __name__ == "__main__":
    main()
