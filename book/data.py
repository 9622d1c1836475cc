# Generated from chapters/08_training.ipynb by tools/export.py: edit the notebook, not this file.
"""Dates as people write them, paired with ISO 8601: data, tokenizer, batches (chapter 8)."""
import operator
import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import NamedTuple

import torch

from book.attention import causal_mask, padding_mask

FIRST_DATE = date(1900, 1, 1)
LAST_DATE = date(2099, 12, 31)
MONTHS = ("January", "February", "March", "April", "May", "June",
          "July", "August", "September", "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def ordinal(day):
    """The English ordinal of a day of the month: 1 -> '1st', 12 -> '12th', 22 -> '22nd'."""
    if 11 <= day % 100 <= 13:  # eleventh, twelfth, thirteenth break the pattern
        return f"{day}th"
    return f"{day}" + {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def _month(d):
    return MONTHS[d.month - 1]


def _weekday(d):
    return WEEKDAYS[d.weekday()]


# Each format turns a datetime.date into text; the keys are the names used in tables.
FORMATS = {
    "D Month YYYY": lambda d: f"{d.day} {_month(d)} {d.year}",
    "Month D, YYYY": lambda d: f"{_month(d)} {d.day}, {d.year}",
    "Weekday, Month D, YYYY": lambda d: f"{_weekday(d)}, {_month(d)} {d.day}, {d.year}",
    "Wkd D Mon YYYY": lambda d: f"{_weekday(d)[:3]} {d.day} {_month(d)[:3]} {d.year}",
    "D Mon YYYY": lambda d: f"{d.day} {_month(d)[:3]} {d.year}",
    "Mon D, YYYY": lambda d: f"{_month(d)[:3]} {d.day}, {d.year}",
    "DD.MM.YYYY": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    "YYYY/MM/DD": lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    "month Dth, YYYY": lambda d: f"{_month(d).lower()} {ordinal(d.day)}, {d.year}",
    "the Dth of Month YYYY": lambda d: f"the {ordinal(d.day)} of {_month(d)} {d.year}",
    "D MONTH YYYY": lambda d: f"{d.day} {_month(d).upper()} {d.year}",
    "MM/DD/YYYY": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year}",
}


def format_date(d, fmt):
    """The text of ``d`` (a datetime.date in FIRST_DATE..LAST_DATE) in format ``fmt``, a key of FORMATS."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown date format {fmt!r}; expected one of {list(FORMATS)}")
    if not isinstance(d, date) or isinstance(d, datetime):  # a datetime is a date with a time of day
        raise ValueError(f"expected a datetime.date, got {type(d).__name__} {d!r}")
    if not FIRST_DATE <= d <= LAST_DATE:
        raise ValueError(f"date {d} is outside the range {FIRST_DATE}..{LAST_DATE}")
    return FORMATS[fmt](d)


class Example(NamedTuple):
    """One training pair: the text a person writes, the ISO 8601 answer, and the format's name."""
    source: str
    target: str
    format: str


@dataclass(frozen=True)
class DateSplit:
    """Three disjoint lists of datetime.date: a date in one list is in no other, in any format."""
    train: list
    valid: list
    test: list


def split_dates(seed=0, n_valid=600, n_test=3000):
    """Shuffle every date from FIRST_DATE to LAST_DATE with ``seed``, then cut off validation and test dates."""
    n_days = (LAST_DATE - FIRST_DATE).days + 1
    if not (isinstance(n_valid, int) and isinstance(n_test, int) and n_valid >= 1 and n_test >= 1
            and n_valid + n_test < n_days):
        raise ValueError(
            f"n_valid={n_valid!r} and n_test={n_test!r} must be positive integers that leave "
            f"training dates out of the {n_days} days"
        )
    days = [FIRST_DATE + timedelta(days=i) for i in range(n_days)]
    random.Random(seed).shuffle(days)
    return DateSplit(train=days[n_valid + n_test:], valid=days[:n_valid], test=days[n_valid:n_valid + n_test])


def examples_for(dates):
    """One Example per date, the formats taken in turn, so each format gets an equal share."""
    names = list(FORMATS)
    return [Example(FORMATS[names[i % len(names)]](d), d.isoformat(), names[i % len(names)])
            for i, d in enumerate(dates)]


def sample_examples(dates, n, seed, step):
    """``n`` random Examples: a date drawn from ``dates`` and a format drawn from FORMATS.

    The draw depends only on (seed, step), so batch ``step`` is the same in every run with
    that seed: a run that stops and resumes sees exactly the batches of one that never stopped.
    """
    if not dates or not isinstance(n, int) or n < 1:
        raise ValueError(f"need at least one date and a positive n, got {len(dates)} dates and n={n!r}")
    rng = random.Random(f"{seed}:{step}")
    names = list(FORMATS)
    examples = []
    for _ in range(n):
        d, fmt = rng.choice(dates), rng.choice(names)
        examples.append(Example(FORMATS[fmt](d), d.isoformat(), fmt))
    return examples


class CharTokenizer:
    """Characters <-> integer ids, one id per character.

    Id 0 is padding, 1 the start token (begins every decoder input), 2 the end token
    (closes every sequence); the characters of ``alphabet`` follow from id 3 on.
    """

    SPECIALS = ("<pad>", "<s>", "</s>")

    def __init__(self, alphabet):
        if not isinstance(alphabet, str) or not alphabet:
            raise ValueError(f"alphabet must be a non-empty string, got {alphabet!r}")
        repeated = sorted({ch for ch in alphabet if alphabet.count(ch) > 1})
        if repeated:
            raise ValueError(f"alphabet repeats the characters {repeated}")
        self.alphabet = alphabet
        self.pad_id, self.start_id, self.end_id = 0, 1, 2
        self._id = {ch: i for i, ch in enumerate(alphabet, start=len(self.SPECIALS))}

    def __len__(self):
        return len(self.SPECIALS) + len(self.alphabet)

    def encode(self, text, start=False, end=True):
        """text -> list of ids, optionally opened by the start id and closed by the end id."""
        if not isinstance(text, str):
            raise ValueError(f"expected a string to encode, got {type(text).__name__} {text!r}")
        ids = []
        for position, ch in enumerate(text):
            if ch not in self._id:
                raise ValueError(
                    f"character {ch!r} at position {position} of {text!r} is not in the vocabulary"
                )
            ids.append(self._id[ch])
        return [self.start_id] * start + ids + [self.end_id] * end

    def decode(self, ids):
        """ids -> text: skips padding and start, stops at the first end id."""
        chars = []
        for i in map(_token_id, ids):
            if not 0 <= i < len(self):
                raise ValueError(f"token id {i} is outside the vocabulary 0..{len(self) - 1}")
            if i == self.end_id:
                break
            if i >= len(self.SPECIALS):
                chars.append(self.alphabet[i - len(self.SPECIALS)])
        return "".join(chars)

    def encode_batch(self, texts, start=False, end=True, device=None):
        """A list of B texts -> a LongTensor (B, T) padded with pad_id to the longest, on ``device``."""
        rows = [self.encode(text, start, end) for text in texts]
        if not rows:
            raise ValueError("encode_batch needs at least one text, got none")
        longest = max(map(len, rows))
        return torch.tensor([row + [self.pad_id] * (longest - len(row)) for row in rows], dtype=torch.long,
                            device=device)

    def decode_batch(self, ids):
        """ids (B, T) -> a list of B texts."""
        return [self.decode(row) for row in ids.tolist()]


def date_tokenizer():
    """The tokenizer for this task: every character of every format, plus the target's digits and '-'."""
    chars = set("0123456789-")
    for d in (date(2000, 1, 1) + timedelta(days=i) for i in range(366)):  # every month, weekday and day
        for fmt in FORMATS.values():
            chars.update(fmt(d))
    return CharTokenizer("".join(sorted(chars)))


def _token_id(i):
    """An id as an int: a float such as 3.7 is refused, not truncated to 3."""
    try:
        return operator.index(i)
    except TypeError:
        raise ValueError(f"token ids must be integers, got {type(i).__name__} {i!r}") from None


@dataclass
class Batch:
    """Token ids and masks for one training step.

    src (B, S): source ids + end. tgt_in (B, T): start + target ids, what the decoder reads.
    tgt_out (B, T): target ids + end, what it must predict at each position.
    src_mask (B, 1, S): True on real source tokens. tgt_mask (B, T, T): padding & causal.
    """
    src: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    src_mask: torch.Tensor
    tgt_mask: torch.Tensor


def make_batch(examples, tokenizer, device=None, target_tokenizer=None):
    """A list of Examples (or (source, target) pairs) -> a padded Batch with its masks, on ``device``.

    The targets are encoded by ``target_tokenizer`` when sources and targets have different
    vocabularies (letters and phones in chapter 13); by ``tokenizer`` otherwise, as for dates.
    """
    target_tokenizer = _target_side(tokenizer, target_tokenizer)
    src = tokenizer.encode_batch([ex[0] for ex in examples], device=device)
    tgt = target_tokenizer.encode_batch([ex[1] for ex in examples], start=True, end=True, device=device)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]  # teacher forcing: read up to t, predict t + 1
    src_mask = padding_mask(src, tokenizer.pad_id)
    tgt_mask = padding_mask(tgt_in, tokenizer.pad_id) & causal_mask(tgt_in.size(1), src.device)
    return Batch(src, tgt_in, tgt_out, src_mask, tgt_mask)


def batch_for_step(dates, tokenizer, batch_size, seed, step, device=None):
    """Training batch number ``step`` of a run with ``seed``: ``batch_size`` random Examples from ``dates``."""
    return make_batch(sample_examples(dates, batch_size, seed, step), tokenizer, device)


def _target_side(tokenizer, target_tokenizer):
    """The tokenizer of the targets; both sides must pad with the same id, the model's pad_id."""
    if target_tokenizer is None:
        return tokenizer
    if target_tokenizer.pad_id != tokenizer.pad_id:
        raise ValueError(f"the source and target tokenizers pad with different ids "
                         f"({tokenizer.pad_id} and {target_tokenizer.pad_id}); the model has one pad_id")
    return target_tokenizer


def sample_pairs(pairs, n, seed, step):
    """``n`` (source, target) pairs drawn at random from ``pairs``, as sample_examples draws dates.

    The draw depends only on (seed, step), so a resumed run sees the batches of one that never stopped.
    """
    if not pairs or isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"need at least one pair and a positive n, got {len(pairs)} pairs and n={n!r}")
    rng = random.Random(f"{seed}:{step}")
    return [pairs[rng.randrange(len(pairs))] for _ in range(n)]


def pairs_batch_for_step(pairs, tokenizer, batch_size, seed, step, device=None, target_tokenizer=None):
    """Training batch number ``step`` of a run on any (source, target) pairs; targets may differ in length."""
    return make_batch(sample_pairs(pairs, batch_size, seed, step), tokenizer, device, target_tokenizer)
