"""book.data: the date formats, the split by date, the tokenizer and the batches (chapter 8)."""
from datetime import date, datetime, timedelta

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from book.data import (
    FIRST_DATE, FORMATS, LAST_DATE, Example, batch_for_step, date_tokenizer, examples_for, format_date,
    make_batch, ordinal, pairs_batch_for_step, sample_examples, sample_pairs, split_dates, CharTokenizer,
)

NOV_25 = date(2026, 11, 25)
MAR_5 = date(1995, 3, 5)

# The twelve formats exactly as the book promises them, for both example dates.
EXPECTED = {
    "D Month YYYY": ("25 November 2026", "5 March 1995"),
    "Month D, YYYY": ("November 25, 2026", "March 5, 1995"),
    "Weekday, Month D, YYYY": ("Wednesday, November 25, 2026", "Sunday, March 5, 1995"),
    "Wkd D Mon YYYY": ("Wed 25 Nov 2026", "Sun 5 Mar 1995"),
    "D Mon YYYY": ("25 Nov 2026", "5 Mar 1995"),
    "Mon D, YYYY": ("Nov 25, 2026", "Mar 5, 1995"),
    "DD.MM.YYYY": ("25.11.2026", "05.03.1995"),
    "YYYY/MM/DD": ("2026/11/25", "1995/03/05"),
    "month Dth, YYYY": ("november 25th, 2026", "march 5th, 1995"),
    "the Dth of Month YYYY": ("the 25th of November 2026", "the 5th of March 1995"),
    "D MONTH YYYY": ("25 NOVEMBER 2026", "5 MARCH 1995"),
    "MM/DD/YYYY": ("11/25/2026", "03/05/1995"),
}

TOKENIZER = date_tokenizer()
SPLIT = split_dates()


def test_there_are_the_twelve_formats():
    assert list(FORMATS) == list(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_format_matches_the_examples(name):
    assert format_date(NOV_25, name) == EXPECTED[name][0]
    assert format_date(MAR_5, name) == EXPECTED[name][1]


@pytest.mark.parametrize(
    "day, text",
    [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (10, "10th"), (11, "11th"), (12, "12th"), (13, "13th"),
     (20, "20th"), (21, "21st"), (22, "22nd"), (23, "23rd"), (24, "24th"), (30, "30th"), (31, "31st")],
)
def test_ordinal_suffixes(day, text):
    assert ordinal(day) == text
    assert format_date(date(2000, 1, day), "month Dth, YYYY") == f"january {text}, 2000"


def test_the_weekday_agrees_with_the_calendar():
    # 1 January 1900 was a Monday, 31 December 2099 is a Thursday.
    assert format_date(FIRST_DATE, "Weekday, Month D, YYYY") == "Monday, January 1, 1900"
    assert format_date(LAST_DATE, "Wkd D Mon YYYY") == "Thu 31 Dec 2099"


def test_format_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="'DD-MM-YY'"):
        format_date(NOV_25, "DD-MM-YY")
    with pytest.raises(ValueError, match="1899-12-31"):
        format_date(date(1899, 12, 31), "DD.MM.YYYY")
    with pytest.raises(ValueError, match="2100-01-01"):
        format_date(date(2100, 1, 1), "DD.MM.YYYY")
    with pytest.raises(ValueError, match="'2026-11-25'"):
        format_date("2026-11-25", "DD.MM.YYYY")


def test_split_is_disjoint_complete_and_large_enough():
    n_days = (LAST_DATE - FIRST_DATE).days + 1
    train, valid, test = set(SPLIT.train), set(SPLIT.valid), set(SPLIT.test)
    assert not train & test and not train & valid and not valid & test
    assert len(train) + len(valid) + len(test) == n_days == len(train | valid | test)
    assert len(test) >= 2000
    assert min(train | valid | test) == FIRST_DATE and max(train | valid | test) == LAST_DATE


def test_no_test_date_is_in_any_training_batch():
    test_targets = {d.isoformat() for d in SPLIT.test}
    for step in range(1, 30):
        for ex in sample_examples(SPLIT.train, 64, seed=0, step=step):
            assert ex.target not in test_targets


def test_split_is_reproducible_and_depends_on_the_seed():
    assert split_dates(seed=0) == SPLIT
    assert split_dates(seed=1).test != SPLIT.test


@pytest.mark.parametrize("n_valid, n_test", [(0, 10), (10, 0), (40_000, 40_000), (1.5, 10)])
def test_split_rejects_bad_sizes(n_valid, n_test):
    with pytest.raises(ValueError, match="n_valid"):
        split_dates(n_valid=n_valid, n_test=n_test)


def test_examples_for_gives_every_format_an_equal_share():
    examples = examples_for(SPLIT.test)
    counts = {name: sum(ex.format == name for ex in examples) for name in FORMATS}
    assert set(counts.values()) == {len(SPLIT.test) // len(FORMATS)}
    assert all(ex.source == format_date(date.fromisoformat(ex.target), ex.format) for ex in examples)


def test_sample_examples_depends_only_on_seed_and_step():
    a = sample_examples(SPLIT.train, 32, seed=3, step=7)
    assert a == sample_examples(SPLIT.train, 32, seed=3, step=7)
    assert a != sample_examples(SPLIT.train, 32, seed=3, step=8)
    assert a != sample_examples(SPLIT.train, 32, seed=4, step=7)
    assert all(isinstance(ex, Example) and ex.format in FORMATS for ex in a)


def test_every_character_of_every_format_is_in_the_vocabulary():
    days = [FIRST_DATE + timedelta(days=i) for i in range(0, (LAST_DATE - FIRST_DATE).days + 1, 7)]
    for d in days + [NOV_25, MAR_5]:
        for name in FORMATS:
            text = format_date(d, name)
            assert TOKENIZER.decode(TOKENIZER.encode(text)) == text
        assert TOKENIZER.decode(TOKENIZER.encode(d.isoformat(), start=True)) == d.isoformat()


def test_special_ids():
    assert (TOKENIZER.pad_id, TOKENIZER.start_id, TOKENIZER.end_id) == (0, 1, 2)
    assert TOKENIZER.encode("25", start=True, end=True)[0] == 1
    assert TOKENIZER.encode("25")[-1] == 2
    assert len(TOKENIZER) == 3 + len(TOKENIZER.alphabet)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=TOKENIZER.alphabet, max_size=40))
def test_round_trip(text):
    ids = TOKENIZER.encode(text, start=True, end=True)
    assert TOKENIZER.decode(ids) == text
    assert all(3 <= i < len(TOKENIZER) for i in ids[1:-1])


def test_decode_stops_at_the_end_token_and_skips_padding():
    ids = TOKENIZER.encode("2026", start=True) + [TOKENIZER.pad_id] + TOKENIZER.encode("99")
    assert TOKENIZER.decode(ids) == "2026"
    assert TOKENIZER.decode([TOKENIZER.pad_id] + TOKENIZER.encode("11")) == "11"


def test_unknown_character_names_it_and_its_position():
    with pytest.raises(ValueError, match=r"'z' at position 5"):
        TOKENIZER.encode("25 Dez 2026")
    with pytest.raises(ValueError, match=r"'é' at position 1"):
        TOKENIZER.encode("Fé")
    with pytest.raises(ValueError, match="string"):
        TOKENIZER.encode(2026)


def test_decode_rejects_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match=str(len(TOKENIZER))):
        TOKENIZER.decode([3, len(TOKENIZER)])
    with pytest.raises(ValueError, match="-1"):
        TOKENIZER.decode([-1])


def test_decode_refuses_ids_that_are_not_integers():
    # int() would have truncated 5.9 to 5 and decoded a character the ids do not name.
    assert TOKENIZER.decode(torch.tensor([5, 6])) == TOKENIZER.decode([5, 6])
    with pytest.raises(ValueError, match="integers, got float 5.9"):
        TOKENIZER.decode([5.9, 6])
    with pytest.raises(ValueError, match="integers"):
        TOKENIZER.decode(torch.tensor([5.0, 6.0]))
    with pytest.raises(ValueError, match="integers"):
        TOKENIZER.decode_batch(torch.tensor([[5.0, 6.0]]))


def test_format_date_refuses_a_datetime_by_name():
    with pytest.raises(ValueError, match="datetime.date, got datetime"):
        format_date(datetime(2026, 11, 25, 9, 30), "D Month YYYY")


def test_tokenizer_rejects_bad_alphabets():
    with pytest.raises(ValueError, match=r"\['a'\]"):
        CharTokenizer("abca")
    with pytest.raises(ValueError, match="non-empty"):
        CharTokenizer("")


def test_batch_padding_shift_and_masks():
    examples = examples_for([NOV_25, MAR_5])  # "25 November 2026" and "March 5, 1995"
    batch = make_batch(examples, TOKENIZER)
    assert batch.src.shape == (2, 17) and batch.tgt_in.shape == batch.tgt_out.shape == (2, 11)
    assert TOKENIZER.decode_batch(batch.src) == ["25 November 2026", "March 5, 1995"]
    assert batch.src[1, -3:].tolist() == [0, 0, 0]
    assert (batch.tgt_in[:, 0] == TOKENIZER.start_id).all() and (batch.tgt_out[:, -1] == TOKENIZER.end_id).all()
    assert torch.equal(batch.tgt_in[:, 1:], batch.tgt_out[:, :-1])
    assert TOKENIZER.decode(batch.tgt_out[0]) == "2026-11-25"
    assert batch.src_mask.shape == (2, 1, 17) and batch.src_mask.dtype == torch.bool
    assert batch.src_mask[1, 0].tolist() == [True] * 14 + [False] * 3
    assert torch.equal(batch.tgt_mask[0], torch.ones(11, 11, dtype=torch.bool).tril())


def test_batch_for_step_is_the_batch_of_sample_examples():
    batch = batch_for_step(SPLIT.train, TOKENIZER, 16, seed=0, step=3)
    again = make_batch(sample_examples(SPLIT.train, 16, seed=0, step=3), TOKENIZER)
    assert torch.equal(batch.src, again.src) and torch.equal(batch.tgt_out, again.tgt_out)
    assert batch.src.size(0) == 16


# --- Any (source, target) pairs: chapter 13 and the command line's --pairs train on these.

def test_sample_pairs_depends_only_on_seed_and_step():
    pairs = [(f"w{i}", f"p{i}") for i in range(50)]
    first = sample_pairs(pairs, 8, seed=3, step=7)
    assert first == sample_pairs(pairs, 8, seed=3, step=7)
    assert first != sample_pairs(pairs, 8, seed=3, step=8)
    assert all(pair in pairs for pair in first)
    with pytest.raises(ValueError, match="0 pairs"):
        sample_pairs([], 8, seed=0, step=1)
    with pytest.raises(ValueError, match="n=0"):
        sample_pairs(pairs, 0, seed=0, step=1)


def test_pairs_batches_pad_targets_of_different_lengths():
    tokenizer = CharTokenizer("abcdef")
    pairs = [("ab", "c"), ("abc", "defdef")]
    batch = pairs_batch_for_step(pairs, tokenizer, 16, seed=0, step=1)
    lengths = (batch.tgt_out != tokenizer.pad_id).sum(dim=1)
    assert set(lengths.tolist()) == {2, 7}  # "c" + end, "defdef" + end
    # The short row's decoder input is <s> c </s> then padding; no query may attend to the padding.
    short = (lengths == 2).nonzero()[0, 0]
    assert batch.tgt_in[short, :3].tolist() == [tokenizer.start_id, tokenizer.encode("c", end=False)[0], tokenizer.end_id]
    assert not batch.tgt_mask[short, :, 3:].any()


def test_target_tokenizer_must_share_the_pad_id():
    class OtherPad(CharTokenizer):
        def __init__(self, alphabet):
            super().__init__(alphabet)
            self.pad_id = 5

    with pytest.raises(ValueError, match=r"pad with different ids \(0 and 5\)"):
        make_batch([("ab", "cd")], CharTokenizer("ab"), target_tokenizer=OtherPad("cd"))
