"""python -m book translate --beam K (chapter 9): beam search from the command line."""
import pytest

from book import cli
from book.decoding import translate_beam
from book.train import translate
from test_cli import checkpoint, run  # noqa: F401 (checkpoint is a fixture: a tiny, untrained model)

TEXTS = ["25 November 2026", "11/25/2026", "the 1st of May 1990"]


def answers_of(checkpoint, beam_size):
    model, tokenizer, _ = cli.model_from_checkpoint(cli.load_checkpoint(checkpoint))
    model.eval()
    if beam_size == 1:
        return translate(model, tokenizer, TEXTS)
    return translate_beam(model, tokenizer, TEXTS, beam_size=beam_size)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_beam_option_prints_the_beam_search_answers(checkpoint, beam_size):
    result = run("translate", checkpoint, "--beam", beam_size, *TEXTS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == answers_of(checkpoint, beam_size)


def test_beam_option_reads_stdin_too(checkpoint):
    result = run("translate", checkpoint, "--beam", 2, stdin="\n".join(TEXTS) + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == answers_of(checkpoint, 2)


@pytest.mark.parametrize("beam_size", [0, -2])
def test_a_beam_below_one_is_one_clear_line(checkpoint, beam_size):
    result = run("translate", checkpoint, "--beam", beam_size, "25 November 2026")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--beam" in lines[0] and str(beam_size) in lines[0]
    assert "Traceback" not in result.stderr
