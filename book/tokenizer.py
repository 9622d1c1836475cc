# Generated from chapters/14_writing_text.ipynb by tools/export.py: edit the notebook, not this file.
"""A byte-level BPE tokenizer, and the text task of the command line (chapter 14).

``BPETokenizer.train(text, vocab_size)`` learns merges of adjacent ids over the UTF-8 bytes of a
text: ids 0-255 are the bytes, merge i creates id 256 + i. ``encode`` applies the merges in the
order they were learned, ``decode`` joins the bytes back into text. ``TEXT_TASK`` describes the
command line's ``--task text``: its data (Python's documentation topics), its tokenizer, its
model and how it writes answers.
"""
import heapq
import math
from collections import defaultdict
from dataclasses import dataclass

import torch

from book.gpt import GPT, GPTConfig, GPTTranslator
from book.train import TrainConfig


def documentation_text():
    """Python's documentation topics (``pydoc_data.topics``, shipped with CPython): keys sorted, values joined."""
    from pydoc_data.topics import topics
    return "".join(topics[key] for key in sorted(topics))


def split_text(text, held_out=0.1):
    """(training text, held-out text): the last ``held_out`` share of the characters is held out."""
    cut = round(len(text) * (1 - held_out))
    return text[:cut], text[cut:]


class PairIndex:
    """A sequence of ids as a linked list, with the positions of every adjacent pair.

    ids[i] is the id at node i, after[i] and before[i] its neighbours (-1 at the ends); a merged-away
    node is marked by ids[i] = -1. where[(a, b)] is the set of nodes i with ids[i] = a and
    ids[after[i]] = b, so len(where[pair]) is the pair's count, overlaps included.
    """

    def __init__(self, ids):
        n = len(ids)
        self.ids = list(ids)
        self.after = list(range(1, n)) + [-1]
        self.before = list(range(-1, n - 1))
        self.where = defaultdict(set)
        for i in range(n - 1):
            self.where[self.ids[i], self.ids[i + 1]].add(i)
        self.changed = set(self.where)  # pairs whose count moved since the last look

    def count(self, pair):
        return len(self.where.get(pair, ()))

    def _forget(self, i):  # node i no longer starts the pair it started
        j = self.after[i]
        if i >= 0 and j >= 0:
            pair = self.ids[i], self.ids[j]
            self.where[pair].discard(i)
            self.changed.add(pair)

    def _note(self, i):  # node i starts a pair: record it
        j = self.after[i]
        if i >= 0 and j >= 0:
            pair = self.ids[i], self.ids[j]
            self.where[pair].add(i)
            self.changed.add(pair)

    def merge(self, pair, new_id):
        """Replace every occurrence of pair by new_id, left to right; only the touched pairs are recounted."""
        a, b = pair
        for i in sorted(self.where.pop(pair, ())):
            j = self.after[i]
            if self.ids[i] != a or j < 0 or self.ids[j] != b:  # consumed by the merge just left of it
                continue
            self._forget(self.before[i])
            self._forget(j)
            self.ids[i], self.ids[j] = new_id, -1
            k = self.after[i] = self.after[j]
            if k >= 0:
                self.before[k] = i
            self._note(self.before[i])
            self._note(i)
        self.where.pop(pair, None)
        self.changed.discard(pair)

    def sequence(self):
        return [t for t in self.ids if t >= 0]


class BPETokenizer:
    """Byte-level byte-pair encoding: ids 0-255 are bytes; merges[i] = ((a, b), 256 + i)."""

    def __init__(self, merges=()):
        self.merges = [((a, b), new) for (a, b), new in merges]
        _check_merges(self.merges)
        self.pieces = [bytes([i]) for i in range(256)]  # the bytes each id stands for
        for (a, b), _ in self.merges:
            self.pieces.append(self.pieces[a] + self.pieces[b])

    def __len__(self):
        return 256 + len(self.merges)

    @classmethod
    def train(cls, text, vocab_size):
        """Learn merges on ``text`` until there are vocab_size ids or no pair is left.

        Each round merges the most frequent adjacent pair (ties: the smallest (a, b)); a heap keeps
        the pairs by count, and only pairs whose count moved are pushed again.
        """
        _check_train(text, vocab_size)
        index = PairIndex(text.encode("utf-8"))
        heap, merges = [], []
        while 256 + len(merges) < vocab_size:
            for pair in index.changed:
                if index.count(pair):
                    heapq.heappush(heap, (-index.count(pair), pair))
            index.changed = set()
            while heap and -heap[0][0] != index.count(heap[0][1]):  # an old count: drop it
                heapq.heappop(heap)
            if not heap:
                break
            _, pair = heapq.heappop(heap)
            merges.append((pair, 256 + len(merges)))
            index.merge(pair, 256 + len(merges) - 1)
        return cls(merges)

    def encode(self, text):
        """str -> list of ids: the UTF-8 bytes, then every merge in the order it was learned."""
        _check_text(text)
        index = PairIndex(text.encode("utf-8"))
        for pair, new_id in self.merges:
            if index.count(pair):
                index.merge(pair, new_id)
        return index.sequence()

    def decode(self, ids):
        """list of ids -> str; bytes that are not valid UTF-8 become U+FFFD."""
        ids = ids.tolist() if torch.is_tensor(ids) else list(ids)
        _check_ids(ids, len(self))
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_text(text):
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")


def _check_train(text, vocab_size):
    _check_text(text)
    if not _is_int(vocab_size) or vocab_size < 256:
        raise ValueError(f"vocab_size must be an integer >= 256 (the byte ids), got {vocab_size!r}")


def _check_merges(merges):
    for i, ((a, b), new) in enumerate(merges):
        if new != 256 + i or not all(_is_int(x) and 0 <= x < new for x in (a, b)):
            raise ValueError(f"merge {i} is (({a!r}, {b!r}), {new!r}); expected ((a, b), {256 + i}) "
                             f"with a and b ids below {256 + i}")


def _check_ids(ids, size):
    if isinstance(ids, (str, bytes)) or not all(_is_int(i) and 0 <= i < size for i in ids):
        raise ValueError(f"ids must be a list of integers in [0, {size}), got {str(ids)[:60]}")


def text_windows(ids, batch_size, context, seed, step):
    """batch_size windows of context + 1 ids (B, context + 1) from the 1-D tensor ``ids``, at places
    drawn from (seed, step) alone, so a resumed run draws the same batches."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, ids.numel() - context, (batch_size,), generator=g)
    return torch.stack([ids[s:s + context + 1] for s in starts.tolist()])


def window_batch(windows):
    """Windows (B, C + 1) -> a Batch for GPTTranslator: the first token is the 'source', and the model
    predicts every token after the second from all the ones before it."""
    from book.data import Batch
    return Batch(src=windows[:, :1], tgt_in=windows[:, 1:-1], tgt_out=windows[:, 2:], src_mask=None, tgt_mask=None)


@torch.no_grad()
def bits_per_byte(gpt, ids, n_bytes, context=None):
    """Held-out cost of a GPT in bits per byte of text: -log2 p of every token given the ones before it
    (at least context/2 of them, in windows that overlap by half), the first token at log2(V) bits,
    over n_bytes. ids: a 1-D tensor of the text's token ids."""
    context = context or gpt.config.max_len
    was_training = gpt.training
    gpt.eval()
    nats, half = 0.0, context // 2
    for start in range(0, max(ids.numel() - 1, 1), half):
        window = ids[start:start + context]
        if window.numel() < 2:
            break
        logp = torch.log_softmax(gpt(window[None, :-1]).double(), -1)[0]
        nll = -logp.gather(1, window[1:, None])[:, 0]
        nats += nll[0 if start == 0 else half - 1:].sum().item()
        if start + context >= ids.numel():
            break
    gpt.train(was_training)
    return (nats / math.log(2) + math.log2(gpt.config.vocab_size)) / n_bytes


class TextTask:
    """The command line's ``--task text``: what it reads, how it tokenizes, the GPT it trains, how it writes.

    The GPT's vocabulary is the tokenizer's plus one padding id that no text produces, so that every
    byte, NUL included, is a real token. A training window holds ``context`` + 1 ids.
    """
    name = "text"
    vocab_size = 1024
    context = 128
    settings = TrainConfig(d_model=128, num_heads=4, num_layers=4, d_ff=512, dropout=0.1, batch_size=32,
                           warmup=100, lr_factor=1.0, cooldown=100, label_smoothing=0.0, steps=300,
                           eval_every=100, seed=0)

    def read(self, path=None):
        """The training text: Python's documentation, or the UTF-8 file at ``path``; ValueError if unreadable."""
        return documentation_text() if path is None else _read_utf8(path)

    def prepare(self, text, tokenizer=None):
        """(tokenizer, training ids, held-out ids, held-out bytes): the tokenizer is trained on the
        training part unless given; ids are 1-D tensors."""
        train_text, held_text = split_text(text)
        tokenizer = tokenizer or BPETokenizer.train(train_text, self.vocab_size)
        train_ids = torch.tensor(tokenizer.encode(train_text))
        held_ids = torch.tensor(tokenizer.encode(held_text))
        if train_ids.numel() < self.context + 2 or held_ids.numel() < 1:
            raise ValueError(f"the text is too short: {train_ids.numel()} training tokens and {held_ids.numel()} "
                             f"held out; one window needs {self.context + 2}")
        return tokenizer, train_ids, held_ids, len(held_text.encode("utf-8"))

    def model(self, settings, tokenizer, device=None):
        """A GPT sized by ``settings`` (seeded by settings.seed), wrapped to train with chapter 8's train_step."""
        torch.manual_seed(settings.seed)
        config = GPTConfig(vocab_size=len(tokenizer) + 1, d_model=settings.d_model, num_heads=settings.num_heads,
                           num_layers=settings.num_layers, d_ff=settings.d_ff, dropout=settings.dropout,
                           max_len=self.context, pad_id=len(tokenizer))
        return GPTTranslator(GPT(config)).to(device)

    def batch(self, ids, settings, step, rank=0, world_size=1, device=None):
        """Process ``rank``'s rows of training batch ``step`` (all of it for one process)."""
        rows = settings.batch_size // world_size
        windows = text_windows(ids, settings.batch_size, self.context, settings.seed, step)
        return window_batch(windows[rank * rows:(rank + 1) * rows].to(device))

    def score(self, model, held_ids, held_bytes):
        """One line on the held-out text: bits per byte."""
        gpt = model.gpt if isinstance(model, GPTTranslator) else model
        return f"{bits_per_byte(gpt, held_ids.to(gpt.tok_embed.weight.device), held_bytes):.3f} bits per byte"

    def write(self, tokenizer, ids):
        """Token ids -> text, leaving out the padding id."""
        return tokenizer.decode([i for i in ids if i < len(tokenizer)])


TEXT_TASK = TextTask()


def _read_utf8(path):
    from pathlib import Path
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a text file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x})") from None
    if not text.strip():
        raise ValueError(f"{path}: empty, there is no text to train on")
    return text
