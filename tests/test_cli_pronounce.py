"""The command line's translators (chapter 13): train --task pronounce, train --pairs FILE, translate, torchrun."""
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from book import cli
from cli_helpers import ENV, book_train, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

TINY = ["--d-model", "16", "--heads", "2", "--layers", "1", "--d-ff", "32", "--batch-size", "8", "--warmup", "5",
        "--cooldown", "0", "--quiet"]
WEIGHT_TOLERANCE = 1e-5  # as tests/test_distributed.py: 1 and 2 processes, 4 steps, measured ~1e-6


def reverse_pairs(n=200, seed=0):
    """Words and their reversals with a '!' per letter: targets of very different lengths."""
    r = random.Random(seed)
    words = ["".join(r.choice("abcdefgh") for _ in range(r.randint(1, 9))) for _ in range(n)]
    return [(w, w[::-1] + "!" * len(w)) for w in words]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.tsv"
    path.write_text("".join(f"{s}\t{t}\n" for s, t in reverse_pairs()), encoding="utf-8")
    return path


@pytest.mark.parametrize("content, words", [
    (b"abc\tcba\nabc cba\n", ["pairs.tsv", "line 2", "no tab"]),
    (b"abc\tcba\n\tcba\n", ["pairs.tsv", "line 2", "source is empty"]),
    (b"abc\tcba\nabc\t\n", ["pairs.tsv", "line 2", "target is empty"]),
    (b"abc\tcba\nab\xff\tba\n", ["pairs.tsv", "line 2", "not UTF-8"]),
])
def test_bad_pairs_are_one_line_and_nothing_is_written(tmp_path, capsys, content, words):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(content)
    out = tmp_path / "own.pt"
    code = cli.main(["train", "--pairs", str(path), "--out", str(out), "--steps", "2", *TINY])
    one_line_error(code, capsys.readouterr().err, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.tsv"]


def test_a_missing_pairs_file_is_one_line(tmp_path, capsys):
    code = cli.main(["train", "--pairs", str(tmp_path / "none.tsv"), "--out", str(tmp_path / "own.pt"), *TINY])
    one_line_error(code, capsys.readouterr().err, "none.tsv", "no such file")
    assert not (tmp_path / "own.pt").exists()


def test_pairs_go_with_no_other_task(tmp_path, capsys, pairs_file):
    code = cli.main(["train", "--task", "text", "--pairs", str(pairs_file), "--out", str(tmp_path / "own.pt")])
    one_line_error(code, capsys.readouterr().err, "--pairs")


def test_train_and_translate_round_trip_on_pairs(tmp_path, capsys, pairs_file, monkeypatch):
    out = tmp_path / "own.pt"
    assert cli.main(["train", "--pairs", str(pairs_file), "--out", str(out), "--steps", "3", "--dropout", "0.2",
                     *TINY]) == 0
    assert "trained 3 steps on 200 pairs" in capsys.readouterr().out
    state = torch.load(out, weights_only=True)
    assert state["kind"] == cli.PAIRS_KIND and state["alphabet"] == "abcdefgh"
    assert sorted(state["targets"]) == sorted("!abcdefgh") and state["model_config"]["dropout"] == 0.2
    # The checkpoint alone is enough to answer: its tokenizers travel with it.
    assert cli.main(["translate", str(out), "abc", "hgf"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(set(line) <= set("!abcdefgh") for line in lines)
    # A character the pairs never used: its own message, an empty line, and the others answered.
    assert cli.main(["translate", str(out), "abc", "xyz"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1] == "" and "'x'" in captured.err
    # Resuming continues the same run; asking for other settings is refused.
    assert cli.main(["train", "--pairs", str(pairs_file), "--out", str(out), "--steps", "5", "--quiet"]) == 0
    assert torch.load(out, weights_only=True)["step"] == 5
    capsys.readouterr()
    code = cli.main(["train", "--pairs", str(pairs_file), "--out", str(out), "--steps", "6", "--d-model", "32"])
    one_line_error(code, capsys.readouterr().err, "other settings", "d_model=32")


def test_task_pronounce_trains_translates_and_scores(tmp_path, capsys, monkeypatch):
    out = tmp_path / "g2p.pt"
    assert cli.main(["train", "--task", "pronounce", "--out", str(out), "--steps", "2", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "trained 2 steps; 6,216 test words, beam 4: WER" in printed and "PER no stress" in printed
    state = torch.load(out, weights_only=True)
    assert state["source"] == "pronounce" and len(state["targets"]) == 69 and state["phones"]
    assert cli.main(["translate", str(out), "Phoenix", "knight", "--beam", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    known = set(state["targets"])
    assert all(set(line.split()) <= known and "  " not in line for line in lines)


def test_translate_reads_words_from_stdin(tmp_path, capsys, monkeypatch, pairs_file):
    import io
    out = tmp_path / "own.pt"
    assert cli.main(["train", "--pairs", str(pairs_file), "--out", str(out), "--steps", "1", *TINY]) == 0
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO("abc\n\nhg\n"))
    assert cli.main(["translate", str(out)]) == 1  # the empty line is an error, the others are answered
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 3 and captured.out.splitlines()[1] == ""
    assert "line 2: empty line" in captured.err


def test_two_processes_train_pairs_of_different_lengths_as_one(tmp_path, pairs_file):
    # Targets from 2 to 18 characters: the two halves of a batch hold different numbers of target tokens.
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"{n}.pt"
        result = book_train(out, "--pairs", pairs_file, "--steps", 4, "--dropout", 0, *TINY, processes=n)
        assert result.returncode == 0, result.stderr
        runs[n] = torch.load(out, weights_only=True)
    a, b = runs[1]["model"], runs[2]["model"]
    # Key biases move on rounding noise only (see tests/test_distributed.py); every other weight must agree.
    gap = max((a[k] - b[k]).abs().max().item() for k in a if not k.endswith("k_proj.bias"))
    assert gap < WEIGHT_TOLERANCE, gap
    assert runs[2]["history"]["loss"] == pytest.approx(runs[1]["history"]["loss"], rel=1e-4)


def test_ctrl_c_saves_and_the_rerun_resumes(tmp_path, pairs_file):
    out = tmp_path / "own.pt"
    args = [sys.executable, "-m", "book", "train", "--pairs", str(pairs_file), "--out", str(out), "--steps", "100000",
            "--save-every", "100000", *TINY]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    first = proc.stderr.readline()  # the run has started once it says so
    assert "training a translator" in first, first
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    step = torch.load(out, weights_only=True)["step"]
    assert 0 < step < 100000 and "run the same command again to resume" in err
    result = book_train(out, "--pairs", pairs_file, "--steps", step + 2, "--quiet")
    assert result.returncode == 0, result.stderr
    assert torch.load(out, weights_only=True)["step"] == step + 2
