"""book.tokenizer (chapter 14): the BPE training rule against a straightforward trainer, round trips, bad input."""
import random
from collections import Counter

import pytest
import torch

from book.tokenizer import BPETokenizer, TEXT_TASK, bits_per_byte, documentation_text, split_text


def reference_train(text, vocab_size):
    """The rule as written: recount every adjacent pair, merge the most frequent (ties: the smallest
    pair), replace left to right, repeat. Returns (merges, ids of the text)."""
    ids, merges = list(text.encode("utf-8")), []
    while 256 + len(merges) < vocab_size:
        counts = Counter(zip(ids, ids[1:]))
        if not counts:
            break
        best = max(counts.values())
        pair = min(p for p, c in counts.items() if c == best)
        new_id = 256 + len(merges)
        merges.append((pair, new_id))
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                out.append(new_id)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        ids = out
    return merges, ids


def reference_encode(merges, text):
    ids = list(text.encode("utf-8"))
    for pair, new_id in merges:
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                out.append(new_id)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        ids = out
    return ids


TEXTS = ["aaaa", "aaaaa", "aaabdaaabac", "abababab", "abcabcabcab", "the cat sat on the mat; the hat",
         "ba ab ba ab", "éé ü 漢字漢字 🙂🙂🙂 \x00\x00\x00a", "", "x",
         "".join(random.Random(0).choice("ab ") for _ in range(500))]


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
@pytest.mark.parametrize("vocab_size", [256, 257, 260, 300])
def test_training_follows_the_rule(text, vocab_size):
    merges, ids = reference_train(text, vocab_size)
    tok = BPETokenizer.train(text, vocab_size)
    assert tok.merges == merges
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text
    assert len(tok) == 256 + len(merges)


def test_hand_checked_cases():
    # "aaaa": (97, 97) counts 3 (overlaps count); merged left to right: [256, 256], then (256, 256).
    tok = BPETokenizer.train("aaaa", 300)
    assert tok.merges == [((97, 97), 256), ((256, 256), 257)]
    assert tok.encode("aaaa") == [257] and tok.encode("aaa") == [256, 97]
    # A tie between (97, 98) and (98, 99), twice each: the smaller pair (97, 98) goes first.
    assert BPETokenizer.train("abcabc", 257).merges == [((97, 98), 256)]
    # No pair left: training stops before vocab_size.
    assert len(BPETokenizer.train("ab", 1000)) == 257


def test_documentation_prefix_and_unseen_text():
    text = documentation_text()
    assert 400_000 < len(text) < 600_000
    part = text[:30_000]
    merges, _ = reference_train(part, 400)
    tok = BPETokenizer.train(part, 400)
    assert tok.merges == merges
    unseen = text[-5_000:] + "café 東京 🐍 \x00 naïve ☃"
    assert tok.encode(unseen) == reference_encode(merges, unseen)
    assert tok.decode(tok.encode(unseen)) == unseen


@pytest.mark.parametrize("text", ["", "\x00", "Ünïcödé", "中文字符", "🙂👍🏽", "a\x00b\r\n\t", "\udcff".encode(
    "utf-8", "surrogatepass").decode("utf-8", "replace")])
def test_round_trips(text):
    tok = BPETokenizer.train("hello world, hello there. Ünïcödé " * 20, 300)
    assert tok.decode(tok.encode(text)) == text


def test_decode_replaces_invalid_bytes_and_takes_tensors():
    tok = BPETokenizer()
    assert tok.decode([0xC3]) == "\ufffd"
    assert tok.decode(torch.tensor([104, 105])) == "hi"


@pytest.mark.parametrize("args", [("abc", 255), ("abc", 0), ("abc", 300.0), ("abc", True), (b"abc", 300),
                                  (None, 300)])
def test_train_bad_input(args):
    with pytest.raises(ValueError):
        BPETokenizer.train(*args)


def test_encode_decode_bad_input():
    tok = BPETokenizer.train("abab", 260)
    with pytest.raises(ValueError, match="str"):
        tok.encode(b"ab")
    with pytest.raises(ValueError, match="258"):
        tok.decode([258])
    with pytest.raises(ValueError):
        tok.decode([-1])
    with pytest.raises(ValueError):
        BPETokenizer([((1, 2), 300)])


def test_split_and_bits_per_byte():
    train, held = split_text("x" * 100)
    assert (len(train), len(held)) == (90, 10)
    # An untrained GPT with all logits equal would cost log2(V) bits per token; a random one is near that.
    tok = BPETokenizer.train("abcd" * 100, 260)
    settings = TEXT_TASK.settings.__class__(d_model=8, num_heads=2, num_layers=1, d_ff=16, dropout=0.0)
    model = TEXT_TASK.model(settings, tok)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    ids = torch.tensor(tok.encode("abcd" * 100))
    n_bytes = 400
    expected = ids.numel() * torch.log2(torch.tensor(float(len(tok) + 1))).item() / n_bytes
    assert bits_per_byte(model.gpt, ids, n_bytes) == pytest.approx(expected, rel=1e-6)
