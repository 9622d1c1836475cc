"""book.pronounce (chapter 13): the held-out rule, the phone tokenizer, the scores, the pairs reader."""
import zlib

import pytest

from book.data import sample_pairs
from book.pronounce import (PhoneTokenizer, char_tokenizers, edit_distance, error_rates, load_dictionary,
                            pairs_for_step, pairs_of, read_pairs, split_of, split_words, strip_stress, tokenizers_for)


@pytest.fixture(scope="module")
def dictionary():
    return load_dictionary()


@pytest.fixture(scope="module")
def split(dictionary):
    return split_words(dictionary)


def test_the_split_follows_the_crc32_rule(dictionary, split):
    for words, bucket in ((split.test, {0}), (split.valid, {1}), (split.train, set(range(2, 20)))):
        assert {zlib.crc32(w.encode("utf-8")) % 20 for w in words} <= bucket
    assert len(split.train) + len(split.valid) + len(split.test) == len(dictionary)
    assert split_of("knight") == "test" and zlib.crc32(b"knight") % 20 == 0


def test_no_test_word_is_trained_on_in_any_pronunciation(dictionary, split):
    trained = {word for word, _ in pairs_of(split.train)}
    assert not trained & set(split.test) and not trained & set(split.valid)
    for word, prons in split.test.items():
        assert prons == dictionary[word]  # every pronunciation went with the word
    several = [w for w in split.test if len(dictionary[w]) > 1]
    assert several, "the test words include words with several pronunciations"
    assert sum(map(len, split.train.values())) == len(pairs_of(split.train))


def test_batches_grouped_by_length_are_a_shuffled_partition_of_one_draw(split):
    pairs = pairs_of(split.train)
    groups, size = 8, 32
    # One chunk: steps 8..15 share one draw of 8 x 32 pairs, each pair used by exactly one step.
    batches = [pairs_for_step(pairs, size, 0, step, groups) for step in range(8, 16)]
    pool = sample_pairs(pairs, size * groups, "0:groups", 1)
    assert sorted(p for batch in batches for p in batch) == sorted(pool)
    # Each batch is one run of the pool sorted by length, so its lengths never overlap another's interior.
    spans = sorted((len(b[0][0]), len(b[-1][0])) for b in batches)
    assert all(lo <= hi for lo, hi in spans) and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    # The steps take the batches in a shuffled order, not shortest first.
    firsts = [len(b[0][0]) for b in batches]
    assert firsts != sorted(firsts)
    # A function of (seed, step) alone; another seed draws other pairs; groups=1 is chapter 8's draw.
    assert pairs_for_step(pairs, size, 0, 11, groups) == batches[3]
    assert pairs_for_step(pairs, size, 1, 11, groups) != batches[3]
    assert pairs_for_step(pairs, size, 0, 11, 1) == sample_pairs(pairs, size, 0, 11)


def test_grouped_batches_carry_less_padding(split):
    pairs = pairs_of(split.train)

    def real_share(groups):  # source letters that are not padding, over 64 batches of 128
        batches = [pairs_for_step(pairs, 128, 0, step, groups) for step in range(1, 65)]
        real = sum(len(s) for b in batches for s, _ in b)
        return real / sum(len(b) * max(len(s) for s, _ in b) for b in batches)

    assert real_share(8) > 0.8 and real_share(1) < 0.6  # measured: 0.87 and 0.50


def test_phone_tokenizer_round_trips(dictionary):
    letters, phones = tokenizers_for(dictionary)
    assert len(phones) == 3 + 69 and len(letters) == 3 + 29
    for word in ("knight", "through", "phoenix", "tomato"):
        for pron in dictionary[word]:
            text = " ".join(pron)
            ids = phones.encode(text, start=True)
            assert ids[0] == phones.start_id and ids[-1] == phones.end_id and len(ids) == len(pron) + 2
            assert phones.decode(ids) == text
        assert letters.decode(letters.encode(word)) == word
    batch = phones.encode_batch(["N AY1 T", "TH R UW1", "F IY1 N IH0 K S"])
    assert phones.decode_batch(batch) == ["N AY1 T", "TH R UW1", "F IY1 N IH0 K S"]


def test_phone_tokenizer_refuses_bad_input():
    phones = PhoneTokenizer(["AY1", "N", "T"])
    with pytest.raises(ValueError, match=r"\['XX'\]"):
        phones.encode("N XX T")
    with pytest.raises(ValueError, match="one string"):
        phones.encode(["N", "AY1"])
    for bad in ([], ["A B"], [""], ["N", "N"]):
        with pytest.raises(ValueError):
            PhoneTokenizer(bad)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        phones.decode([7])


def test_edit_distance_by_hand():
    assert edit_distance("kitten", "sitting") == 3  # k->s, e->i, +g
    assert edit_distance([], ["A", "B"]) == 2 and edit_distance(["A"], []) == 1
    assert edit_distance(["N", "AY1", "T"], ["N", "AY1", "T"]) == 0
    assert edit_distance(["K", "N", "AY1", "T"], ["N", "AY1", "T"]) == 1  # one deletion


def test_scores_against_hand_computed_edit_distances():
    refs = [[("F", "IY1", "N", "IH0", "K", "S")], [("TH", "R", "UW1")], [("R", "EH1", "D"), ("R", "IY1", "D")],
            [("N", "AY1", "T")]]
    answers = ["F IY1 N IH1 K S",  # 1 substitution (stress only) of 6
               "TH R OW1",  # 1 substitution of 3
               "R IY1 D",  # the second pronunciation: right
               "K N AY0 T T"]  # 1 insertion + 1 substitution (stress) + 1 insertion: 3 edits of 3
    wer, per = error_rates(answers, refs)
    assert wer == 3 / 4 and per == pytest.approx((1 + 1 + 0 + 3) / (6 + 3 + 3 + 3))
    wer, per = error_rates(answers, refs, stress=False)
    assert wer == 2 / 4 and per == pytest.approx((0 + 1 + 0 + 2) / 15)
    # The closest pronunciation is the one a word is scored against: R EH1 D is 1 away, R IY1 D 0.
    assert error_rates(["R EH1 D"], [refs[2]]) == (0.0, 0.0)
    assert strip_stress(("AY1", "N", "ER0")) == ("AY", "N", "ER")


def test_scores_refuse_mismatched_input():
    with pytest.raises(ValueError, match="one answer per word"):
        error_rates(["N AY1 T"], [])
    with pytest.raises(ValueError, match="no listed pronunciation"):
        error_rates(["N AY1 T"], [[]])


def test_read_pairs_reads_a_good_file(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("cat\tchat\n\ndog\tchien\r\nhorse\tche\tval\n", encoding="utf-8")
    assert read_pairs(path) == [("cat", "chat"), ("dog", "chien"), ("horse", "che\tval")]
    source, target = char_tokenizers(read_pairs(path))
    assert source.alphabet == "acdeghorst" and "\t" in target.alphabet


@pytest.mark.parametrize("content, message", [
    (b"cat\tchat\ndog chien\n", r"pairs.tsv, line 2: no tab"),
    (b"cat\tchat\n\tchien\n", r"pairs.tsv, line 2: the source is empty"),
    (b"cat\t \n", r"pairs.tsv, line 1: the target is empty"),
    (b"cat\tchat\ncaf\xe9\tcafe\n", r"pairs.tsv, line 2: not UTF-8"),
    (b"\n\n", r"pairs.tsv: no pairs"),
])
def test_read_pairs_names_the_file_and_line_of_bad_input(tmp_path, content, message):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_pairs(path)


def test_read_pairs_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nothing.tsv: no such file"):
        read_pairs(tmp_path / "nothing.tsv")
