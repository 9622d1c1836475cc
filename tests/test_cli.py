"""The command line (book/cli.py): checkpoints, resuming, Ctrl-C and error handling."""
import errno
import io
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from book import cli
from book.data import date_tokenizer
from book.train import TrainConfig, build_model, make_optimizer, new_history, translate

# --cooldown 0: with a cooldown, a run continued to more steps has another schedule than one long run.
TINY_ARGS = ["--d-model", "16", "--heads", "2", "--layers", "1", "--d-ff", "32", "--batch-size", "16", "--warmup", "10",
             "--cooldown", "0"]
TINY = TrainConfig(d_model=16, num_heads=2, num_layers=1, d_ff=32, batch_size=16, warmup=10, cooldown=0, steps=10)


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


# Subprocesses use one thread too (see one_thread in tests/conftest.py).
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run(*args, stdin=None, timeout=120):
    """python -m book ARGS, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "book", *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint of a tiny, untrained model."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    tokenizer = date_tokenizer()
    model = build_model(TINY, tokenizer)
    cli.save_checkpoint(path, model, make_optimizer(model), tokenizer, TINY, 0, new_history())
    return path


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_checkpoint_round_trip(checkpoint):
    state = torch.load(checkpoint, weights_only=True)  # only plain data inside
    assert state["kind"] == cli.CHECKPOINT_KIND and state["step"] == 0
    model, tokenizer, settings = cli.model_from_checkpoint(cli.load_checkpoint(checkpoint))
    assert settings == TINY and tokenizer.alphabet == date_tokenizer().alphabet
    original = build_model(TINY, tokenizer)
    assert_same_weights(original.state_dict(), model.state_dict())
    texts = ["25 November 2026", "11/25/2026"]
    assert translate(model, tokenizer, texts) == translate(original, tokenizer, texts)


def test_save_is_atomic(tmp_path, checkpoint, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(checkpoint.read_bytes())
    tokenizer = date_tokenizer()
    model = build_model(TINY, tokenizer)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(cli.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        cli.save_checkpoint(path, model, make_optimizer(model), tokenizer, TINY, 5, new_history())
    assert path.read_bytes() == checkpoint.read_bytes(), "a failed save must leave the old checkpoint intact"
    assert os.listdir(tmp_path) == ["model.pt"], "no temporary file may be left behind"


@pytest.mark.parametrize("umask, old_mode, expected", [(0o022, None, 0o644), (0o027, None, 0o640), (0o077, 0o644, 0o644)])
def test_save_gives_a_new_file_the_umask_mode_and_keeps_an_old_files_mode(tmp_path, umask, old_mode, expected):
    path = tmp_path / "model.pt"
    if old_mode is not None:
        path.write_bytes(b"an older checkpoint")
        path.chmod(old_mode)
    tokenizer = date_tokenizer()
    model = build_model(TINY, tokenizer)
    previous = os.umask(umask)
    try:
        cli.save_checkpoint(path, model, make_optimizer(model), tokenizer, TINY, 0, new_history())
    finally:
        os.umask(previous)
    assert oct(stat.S_IMODE(path.stat().st_mode)) == oct(expected)


def test_training_more_steps_resumes_and_matches_one_long_run(tmp_path, capsys):
    resumed, straight = str(tmp_path / "resumed.pt"), str(tmp_path / "straight.pt")
    assert cli.main(["train", "--out", resumed, "--steps", "12", "--quiet", *TINY_ARGS]) == 0
    assert torch.load(resumed, weights_only=True)["step"] == 12
    assert cli.main(["train", "--out", resumed, "--steps", "24", "--quiet", *TINY_ARGS]) == 0
    assert "resuming" in capsys.readouterr().err
    assert cli.main(["train", "--out", straight, "--steps", "24", "--quiet", *TINY_ARGS]) == 0
    a, b = torch.load(resumed, weights_only=True), torch.load(straight, weights_only=True)
    assert a["step"] == b["step"] == 24
    assert_same_weights(a["model"], b["model"])
    assert a["history"]["loss"] == b["history"]["loss"]  # (validation also ran at the first run's last step)
    # Asking again for the same number of steps does nothing.
    assert cli.main(["train", "--out", resumed, "--steps", "24", "--quiet"]) == 0
    assert "nothing to do" in capsys.readouterr().err


def test_ctrl_c_saves_and_the_same_command_resumes_exactly(tmp_path):
    interrupted, straight = tmp_path / "interrupted.pt", tmp_path / "straight.pt"
    command = ["train", "--steps", "300", "--save-every", "5", "--quiet", *TINY_ARGS]
    process = subprocess.Popen([sys.executable, "-m", "book", *command, "--out", str(interrupted)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 60
    while not interrupted.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the first periodic save shows that training has started
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "run the same command again" in stderr and "Traceback" not in stderr
    stopped_at = torch.load(interrupted, weights_only=True)["step"]
    assert 5 <= stopped_at < 300

    again = run(*command, "--out", interrupted)
    assert again.returncode == 0, again.stderr
    assert f"resuming {interrupted} from step {stopped_at} of 300" in again.stderr
    assert run(*command, "--out", straight).returncode == 0
    assert_same_weights(weights(interrupted), weights(straight))


def test_train_refuses_a_foreign_file_and_clashing_settings(tmp_path, checkpoint, capsys):
    foreign = tmp_path / "notes.pt"
    foreign.write_text("my notes, not a model\n")
    assert cli.main(["train", "--out", str(foreign)]) == 2
    assert foreign.read_text() == "my notes, not a model\n"
    assert cli.main(["train", "--out", str(checkpoint), "--seed", "7", *TINY_ARGS]) == 2
    assert "seed=7" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(tmp_path / "missing-dir" / "m.pt")]) == 2


def test_train_refuses_an_out_it_cannot_save_to_before_training(tmp_path, capsys):
    # A legal 250-character name, but the temporary file beside it (".NAME.xxxxxxxx.tmp") is too long.
    out = tmp_path / ("m" * 247 + ".pt")
    assert cli.main(["train", "--out", str(out), "--steps", "5", "--quiet", *TINY_ARGS]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and str(out) in err
    assert "File name too long" in err and "training" not in err  # it failed before training
    assert os.listdir(tmp_path) == []


def test_a_save_that_fails_during_training_is_one_line_and_keeps_the_old_checkpoint(tmp_path, checkpoint, capsys,
                                                                                     monkeypatch):
    out = tmp_path / "model.pt"
    out.write_bytes(checkpoint.read_bytes())  # step 0 of TINY's 10 steps

    def disk_full(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli.torch, "save", disk_full)
    assert cli.main(["train", "--out", str(out), "--quiet"]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: ") and str(out) in message and "No space left on device" in message
    assert out.read_bytes() == checkpoint.read_bytes()
    assert os.listdir(tmp_path) == ["model.pt"]


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64])
def test_train_refuses_a_seed_torch_cannot_take(tmp_path, capsys, seed):
    out = tmp_path / "m.pt"
    assert cli.main(["train", "--out", str(out), "--seed", str(seed), "--steps", "1", "--quiet", *TINY_ARGS]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--seed" in err and str(seed) in err
    assert not out.exists()


def test_translate_an_argument(checkpoint):
    result = run("translate", checkpoint, "25 November 2026")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1


def test_translate_stdin_keeps_one_line_per_input_and_reports_bad_lines(checkpoint):
    lines = ["25 November 2026", "", "25 Dez 2026", "11/25/2026", "9" * 150, "Mar 5, 1995"]
    result = run("translate", checkpoint, stdin="\n".join(lines) + "\n")
    assert result.returncode == 1
    out = result.stdout.split("\n")
    assert len(out) == len(lines) + 1 and out[-1] == ""
    assert out[1] == out[2] == out[4] == ""
    assert "Traceback" not in result.stderr
    messages = result.stderr.strip().splitlines()
    assert len(messages) == 3
    assert messages[0].startswith("line 2:") and "empty" in messages[0]
    assert messages[1].startswith("line 3:") and "'z' at position 5" in messages[1]
    assert messages[2].startswith("line 5:") and "150 characters" in messages[2]


def test_translate_stdin_that_is_not_utf8_reports_the_line_and_answers_the_others(checkpoint, capsys, monkeypatch):
    # A Latin-1 line ("25 März 2026") read under a UTF-8 locale, whose stdin decodes strictly.
    data = b"25 November 2026\n" + "25 März 2026\n".encode("latin-1") + b"11/25/2026\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="strict"))
    assert cli.main(["translate", str(checkpoint)]) == 1
    captured = capsys.readouterr()
    out = captured.out.split("\n")
    assert len(out) == 4 and out[0] and out[1] == "" and out[2] and out[3] == ""
    messages = captured.err.strip().splitlines()
    assert len(messages) == 1 and messages[0].startswith("line 2:") and "position 4" in messages[0]


def test_translate_empty_stdin(checkpoint):
    result = run("translate", checkpoint, stdin="")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(run("translate", tmp_path / "nowhere.pt", "25 November 2026"), "no such file")


def test_truncated_checkpoint(tmp_path, checkpoint):
    truncated = tmp_path / "truncated.pt"
    data = checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    assert_one_line_error(run("translate", truncated, "25 November 2026"), "truncated")


@pytest.mark.parametrize("kind", ["text", "tensor dict", "pickled module"])
def test_foreign_file(tmp_path, kind):
    foreign = tmp_path / "foreign.pt"
    if kind == "text":
        foreign.write_text("25 November 2026\n")
    elif kind == "tensor dict":
        torch.save({"weights": torch.zeros(3)}, foreign)
    else:
        torch.save(nn.Linear(2, 2), foreign)  # weights_only loading refuses arbitrary objects
    assert_one_line_error(run("translate", foreign, "25 November 2026"), str(foreign))


@pytest.mark.parametrize("cooldown", [None, "11"])
def test_a_cooldown_longer_than_the_run_is_one_line_and_exit_2(tmp_path, capsys, cooldown):
    # None: chapter 8's default cooldown of 400 steps, longer than a 10-step run too.
    out = tmp_path / "m.pt"
    sizes = [a for a in TINY_ARGS if a not in ("--cooldown", "0")]
    given = ["--cooldown", cooldown] if cooldown else []
    assert cli.main(["train", "--out", str(out), "--steps", "10", "--quiet", *sizes, *given]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert f"cooldown of {cooldown or TrainConfig.cooldown} steps" in err[0] and "10 steps" in err[0]
    assert "--cooldown 10 or less" in err[0]
    assert not out.exists()
    # A cooldown as long as the run is accepted.
    assert cli.main(["train", "--out", str(out), "--steps", "10", "--quiet", *sizes, "--cooldown", "10"]) == 0
