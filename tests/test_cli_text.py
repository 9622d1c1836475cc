"""The command line's text task (chapter 14): train --task text, generate, and their bad input."""
import os
import random
import subprocess
import sys

import pytest
import torch

from book import cli
from cli_helpers import one_line_error
from book.data import date_tokenizer
from book.train import TrainConfig, build_model, make_optimizer, new_history

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

TINY = ["--d-model", "16", "--heads", "2", "--layers", "1", "--d-ff", "32", "--batch-size", "4", "--warmup", "5",
        "--cooldown", "0", "--quiet"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    words = ["the", "with", "statement", "calls", "enter", "and", "exit", "of", "a", "context", "manager", "café"]
    r = random.Random(0)
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(" ".join(r.choice(words) for _ in range(3000)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lm(tmp_path_factory, text_file):
    path = tmp_path_factory.mktemp("lm") / "lm.pt"
    assert cli.main(["train", "--task", "text", "--text", str(text_file), "--out", str(path), "--steps", "3", *TINY]) == 0
    return path


def test_train_saves_the_tokenizer_and_a_gpt(lm, capsys):
    state = torch.load(lm, weights_only=True)
    assert state["kind"] == cli.TEXT_KIND and state["step"] == 3
    assert len(state["merges"]) == 1024 - 256 and state["model_config"]["max_len"] == 128
    assert state["model_config"]["vocab_size"] == 1025


def test_generate_prints_a_continuation_reproducibly(lm, capsys):
    args = ["generate", str(lm), "the with", "--max-new-tokens", "12", "--temperature", "0.9", "--top-k", "20",
            "--top-p", "0.9", "--seed", "3"]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert cli.main(args) == 0
    assert capsys.readouterr().out == first and first.strip()


def test_resumed_run_equals_one_run(tmp_path, text_file):
    straight, resumed = tmp_path / "a.pt", tmp_path / "b.pt"
    base = ["train", "--task", "text", "--text", str(text_file), *TINY]
    assert cli.main([*base, "--out", str(straight), "--steps", "4"]) == 0
    assert cli.main([*base, "--out", str(resumed), "--steps", "2"]) == 0
    assert cli.main([*base, "--out", str(resumed), "--steps", "4"]) == 0
    a, b = torch.load(straight, weights_only=True)["model"], torch.load(resumed, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dropout_option(tmp_path, text_file):
    out = tmp_path / "d.pt"
    assert cli.main(["train", "--task", "text", "--text", str(text_file), "--out", str(out), "--steps", "1",
                     "--dropout", "0.2", *TINY]) == 0
    assert torch.load(out, weights_only=True)["model_config"]["dropout"] == 0.2


@pytest.mark.parametrize("content, words", [(None, ["no such file"]), (b"\xff\xfe abc", ["not UTF-8"]),
                                            (b"", ["empty"]), (b"  \n", ["empty"]), (b"short", ["too short"])])
def test_bad_text_files(tmp_path, capsys, content, words):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    code = cli.main(["train", "--task", "text", "--text", str(path), "--out", str(tmp_path / "x.pt"), *TINY])
    one_line_error(code, capsys.readouterr().err, str(path) if content != b"short" else "", *words)
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("options, words", [
    (["--temperature", "-0.5"], ["--temperature", "-0.5"]),
    (["--top-p", "0"], ["--top-p", "(0, 1]"]),
    (["--top-p", "1.5"], ["--top-p", "1.5"]),
    (["--top-k", "0"], ["--top-k"]),
    (["--max-new-tokens", "200"], ["context of 128"]),
])
def test_generate_bad_values(lm, capsys, options, words):
    one_line_error(cli.main(["generate", str(lm), "the", *options]), capsys.readouterr().err, *words)


def test_prompt_longer_than_the_context(lm, capsys):
    code = cli.main(["generate", str(lm), "x" * 2000, "--max-new-tokens", "1"])
    one_line_error(code, capsys.readouterr().err, "prompt", "context of 128")


def test_generate_on_a_dates_checkpoint_says_what_it_is(tmp_path, capsys):
    path = tmp_path / "dates.pt"
    settings = TrainConfig(d_model=16, num_heads=2, num_layers=1, d_ff=32, batch_size=16, warmup=10, steps=10)
    tokenizer = date_tokenizer()
    model = build_model(settings, tokenizer)
    cli.save_checkpoint(path, model, make_optimizer(model), tokenizer, settings, 0, new_history())
    one_line_error(cli.main(["generate", str(path), "the"]), capsys.readouterr().err, "date reader", "translate")


def test_translate_on_a_text_checkpoint_says_what_it_is(lm, capsys):
    one_line_error(cli.main(["translate", str(lm), "25 November 2026"]), capsys.readouterr().err, "text model",
                   "generate")


def test_option_misuse(tmp_path, capsys, text_file):
    one_line_error(cli.main(["train", "--text", str(text_file), "--out", str(tmp_path / "x.pt")]),
                   capsys.readouterr().err, "--task text")
    one_line_error(cli.main(["train", "--task", "text", "--dropout", "1.5", "--out", str(tmp_path / "x.pt")]),
                   capsys.readouterr().err, "--dropout")


def test_as_a_user_runs_it(lm):
    result = subprocess.run([sys.executable, "-m", "book", "generate", str(lm), "the", "--max-new-tokens", "5",
                             "--temperature", "0"], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr
