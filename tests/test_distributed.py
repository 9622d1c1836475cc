"""book.distributed and the command line under torchrun: devices, batch slices, DDP equal to one process."""
import dataclasses
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from book import cli
from cli_helpers import ENV, book_train
from book.data import batch_for_step, date_tokenizer, make_batch, sample_examples, split_dates
from book.distributed import (GlobalTokenLoss, Processes, accumulate_gradients, batch_slice, local_batch_size,
                              pick_device, seed_dropout, start, wrap)
from book.train import (TrainConfig, build_model, label_smoothed_cross_entropy, make_optimizer, train_step,
                        translate)

TOKENIZER = date_tokenizer()
SPLIT = split_dates()
TINY_ARGS = ["--d-model", "16", "--heads", "2", "--layers", "1", "--d-ff", "32", "--batch-size", "16",
             "--warmup", "3", "--cooldown", "0", "--quiet"]

# Weights that 1 and 2 processes train to, 4 steps: measured max difference 1.4e-06 (CPU, gloo).
WEIGHT_TOLERANCE = 1e-5
LOGIT_TOLERANCE = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 4 steps of a tiny model, trained by one process and by two."""
    one = tmp_path_factory.mktemp("one") / "model.pt"
    two = tmp_path_factory.mktemp("two") / "model.pt"
    results = {n: book_train(path, "--steps", 4, *TINY_ARGS, processes=n) for n, path in ((1, one), (2, two))}
    for result in results.values():
        assert result.returncode == 0, result.stderr
    return one, two, results


def test_two_processes_train_the_weights_of_one(runs):
    one, two, _ = runs
    a, b = (torch.load(path, weights_only=True)["model"] for path in (one, two))
    assert a.keys() == b.keys()
    # A key bias adds the same number to every score of a query, which the softmax ignores: its true
    # gradient is 0, and its computed gradient is rounding noise of the size of Adam's eps (1e-9), which
    # Adam turns into steps of a sizeable fraction of the learning rate, different in either run.
    # It changes no output (the logits below); every other weight must agree.
    differences = {name: (a[name] - b[name]).abs().max().item() for name in a if not name.endswith("k_proj.bias")}
    assert max(differences.values()) < WEIGHT_TOLERANCE, differences
    model_a, _, _ = cli.model_from_checkpoint(torch.load(one, weights_only=True))
    model_b, _, _ = cli.model_from_checkpoint(torch.load(two, weights_only=True))
    batch = batch_for_step(SPLIT.valid, TOKENIZER, 32, seed=1, step=1)
    with torch.no_grad():
        logits_a, logits_b = (m.eval()(batch.src, batch.tgt_in) for m in (model_a, model_b))
    assert (logits_a - logits_b).abs().max().item() < LOGIT_TOLERANCE


def test_only_rank_0_speaks_and_writes(runs):
    _, two, results = runs
    assert [p.name for p in two.parent.iterdir()] == ["model.pt"]  # one checkpoint, no temporary files
    err = results[2].stderr
    assert err.count("training a new model") == 1
    assert "2 processes on cpu, 8 examples each of every batch of 16" in err
    assert results[2].stdout.count("trained 4 steps") == 1
    assert torch.load(two, weights_only=True)["step"] == 4


def test_resume_under_torchrun_continues_the_run(runs, tmp_path):
    one, two, _ = runs
    # Continue the 2-process run to 6 steps; train 6 steps in one process from scratch.
    resumed = two.parent / "resumed.pt"
    resumed.write_bytes(two.read_bytes())
    result = book_train(resumed, "--steps", 6, "--quiet", processes=2)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr
    straight = book_train(tmp_path / "straight.pt", "--steps", 6, *TINY_ARGS)
    assert straight.returncode == 0, straight.stderr
    a = torch.load(resumed, weights_only=True)["model"]
    b = torch.load(tmp_path / "straight.pt", weights_only=True)["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a if not k.endswith("k_proj.bias")) < WEIGHT_TOLERANCE


def test_a_batch_that_does_not_split_is_one_clear_line(tmp_path):
    args = [a if a != "16" or i != TINY_ARGS.index("--batch-size") + 1 else "15" for i, a in enumerate(TINY_ARGS)]
    result = book_train(tmp_path / "model.pt", "--steps", 2, *args, processes=2)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1, result.stderr
    assert "15" in ours[0] and "2 equal parts" in ours[0]
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "m.pt"), "--device", "cuda", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cuda" in err[0] and err[0].startswith("error:")
    assert not (tmp_path / "m.pt").exists()
    with pytest.raises(ValueError, match="cuda"):
        pick_device("cuda")


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'tpu'"):
        pick_device("tpu")


def test_the_slices_of_a_batch_are_the_batch():
    whole = batch_for_step(SPLIT.train, TOKENIZER, 12, seed=3, step=7)
    parts = [batch_slice(SPLIT.train, TOKENIZER, 12, 3, 7, rank, 3) for rank in range(3)]
    assert [text for p in parts for text in TOKENIZER.decode_batch(p.src)] == TOKENIZER.decode_batch(whole.src)
    assert torch.equal(torch.cat([p.tgt_out for p in parts]), whole.tgt_out)
    one = batch_slice(SPLIT.train, TOKENIZER, 12, 3, 7)
    assert torch.equal(one.src, whole.src) and torch.equal(one.tgt_mask, whole.tgt_mask)


@pytest.mark.parametrize("batch_size, world_size, name", [(8, 0, "world_size"), (8, -2, "world_size"),
                                                        (8, 2.0, "world_size"), (0, 2, "batch_size"),
                                                        (True, 1, "batch_size")])
def test_local_batch_size_refuses_sizes_that_are_not_positive_integers(batch_size, world_size, name):
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        local_batch_size(batch_size, world_size)


@pytest.mark.parametrize("rank", [2, -1, 1.0])
def test_batch_slice_refuses_a_rank_outside_the_world(rank):
    with pytest.raises(ValueError, match=rf"rank must be an integer in \[0, world_size=2\), got {rank}"):
        batch_slice(SPLIT.train, TOKENIZER, 8, 0, 1, rank, 2)


@pytest.mark.parametrize("step", [0, -1, 1.5, True])
def test_batch_slice_refuses_a_step_training_never_takes(step):
    # Training counts its steps from 1; step 0 or 1.5 would quietly draw a batch no run ever sees.
    with pytest.raises(ValueError, match=rf"step must be a positive integer .*got {step}"):
        batch_slice(SPLIT.train, TOKENIZER, 8, 0, step, 0, 2)


@pytest.mark.parametrize("seed", ["a", -1, 1.0, None])
def test_batch_slice_refuses_a_seed_trainconfig_refuses(seed):
    with pytest.raises(ValueError, match=rf"seed must be an integer in \[0, 2\*\*63\).*got {seed!r}"):
        batch_slice(SPLIT.train, TOKENIZER, 8, seed, 1, 0, 2)


def test_batch_slice_refuses_a_device_it_cannot_use():
    with pytest.raises(ValueError, match="device must be a torch.device or its name.*'bogus'"):
        batch_slice(SPLIT.train, TOKENIZER, 8, 0, 1, 0, 2, device="bogus")
    if not torch.cuda.is_available():
        for device in ("cuda", "cuda:1", torch.device("cuda", 0)):
            with pytest.raises(ValueError, match="device 'cuda' asked for"):
                batch_slice(SPLIT.train, TOKENIZER, 8, 0, 1, 0, 2, device=device)
    assert batch_slice(SPLIT.train, TOKENIZER, 8, 0, 1, 0, 2, device=torch.device("cpu")).src.device.type == "cpu"


def torchrun_environment(monkeypatch, **values):
    # What torchrun tells a process, without a partner to meet: start must refuse before it waits for one.
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@pytest.mark.timeout(60)  # a process told it has a partner waits for it; these must fail at once
@pytest.mark.parametrize("environment, message", [
    ({"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE must be an integer, got 'two'"),
    ({"RANK": "first", "WORLD_SIZE": "2"}, "RANK must be an integer, got 'first'"),
    ({"RANK": "1", "WORLD_SIZE": "1"}, r"RANK=1 and WORLD_SIZE=1; a group needs .*0 <= RANK < WORLD_SIZE"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK=-1 and WORLD_SIZE=2"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "RANK=0 and WORLD_SIZE=0"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x"}, "LOCAL_RANK must be an integer, got 'x'"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "-1"}, "LOCAL_RANK=-1 and WORLD_SIZE=2"),
])
def test_start_checks_what_torchrun_says_before_joining(monkeypatch, environment, message):
    torchrun_environment(monkeypatch, **environment)
    with pytest.raises(ValueError, match=message):
        start("cpu")
    assert not dist.is_initialized()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("world_size, message", [("two", "WORLD_SIZE must be an integer, got 'two'"),
                                                 ("0", "RANK=0 and WORLD_SIZE=0")])
def test_a_bad_torchrun_environment_is_one_clear_line(monkeypatch, tmp_path, capsys, world_size, message):
    torchrun_environment(monkeypatch, RANK="0", WORLD_SIZE=world_size)
    assert cli.main(["train", "--out", str(tmp_path / "m.pt"), "--device", "cpu", "--steps", "1", *TINY_ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not (tmp_path / "m.pt").exists()
    # A process told it is rank 1 of 1 stops too, instead of waiting for a rank 0 that does not exist
    # (silently: the command line lets only rank 0 speak).
    torchrun_environment(monkeypatch, RANK="1", WORLD_SIZE="1")
    assert cli.main(["train", "--out", str(tmp_path / "m.pt"), "--device", "cpu", "--steps", "1", *TINY_ARGS]) == 2
    assert not (tmp_path / "m.pt").exists()


@pytest.fixture
def group_of_one(tmp_path):
    """A gloo process group of one process, in this process, through a file: what wrap sees under torchrun."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield Processes(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def test_wrap_refuses_a_model_on_another_device():
    settings = TrainConfig(d_model=16, num_heads=2, num_layers=1, d_ff=32)
    alone = Processes(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="model is on meta, but this process trains on cpu"):
        wrap(build_model(settings, TOKENIZER, device="meta"), alone)
    model = build_model(settings, TOKENIZER)
    assert wrap(model, alone) is model


def test_wrap_in_a_group_refuses_a_model_on_another_device(group_of_one):
    settings = TrainConfig(d_model=16, num_heads=2, num_layers=1, d_ff=32)
    with pytest.raises(ValueError, match="model is on meta, but this process trains on cpu"):
        wrap(build_model(settings, TOKENIZER, device="meta"), group_of_one)
    wrapped = wrap(build_model(settings, TOKENIZER), group_of_one)
    assert wrapped.config.d_model == 16


def test_local_batch_size_names_both_numbers():
    assert local_batch_size(128, 4) == 32
    with pytest.raises(ValueError, match=r"128 examples does not split into 3 equal parts"):
        local_batch_size(128, 3)


def test_batches_and_models_land_on_the_device_asked_for():
    # The meta device holds shapes only: a cheap stand-in for a GPU to check where tensors go.
    batch = make_batch([("25 Nov 2026", "2026-11-25"), ("1.1.2000", "2000-01-01")], TOKENIZER, device="meta")
    assert {t.device.type for t in vars(batch).values()} == {"meta"}
    assert batch_slice(SPLIT.train, TOKENIZER, 4, 0, 1, 1, 2, device="meta").src_mask.is_meta
    model = build_model(TrainConfig(d_model=16, num_heads=2, num_layers=1, d_ff=32), TOKENIZER, device="meta")
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])


def test_translate_feeds_the_model_on_its_device(monkeypatch):
    model = build_model(TrainConfig(d_model=16, num_heads=2, num_layers=1, d_ff=32), TOKENIZER, device="meta")
    seen = []

    def fake_decode(model, src, max_len, start_id, end_id):
        seen.append(src.device.type)
        return torch.full((src.size(0), 1), end_id)

    monkeypatch.setattr("book.train.greedy_decode", fake_decode)
    assert translate(model, TOKENIZER, ["25 Nov 2026"]) == [""]
    assert seen == ["meta"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_and_translate_on_cuda(tmp_path):
    out = tmp_path / "model.pt"
    result = book_train(out, "--steps", 3, "--device", "cuda", *TINY_ARGS)
    assert result.returncode == 0, result.stderr
    for beam in ("1", "3"):
        read = subprocess.run([sys.executable, "-m", "book", "translate", str(out), "--device", "cuda", "--beam", beam,
                               "25 November 2026"], capture_output=True, text=True, timeout=120, env=ENV)
        assert read.returncode == 0, read.stderr


def test_ctrl_c_under_torchrun_saves_once_and_resumes(tmp_path):
    out = tmp_path / "model.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "book",
               "train", "--out", str(out), "--steps", "100000", *TINY_ARGS]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the processes train: the first periodic save
        time.sleep(0.5)
        if out.exists() or proc.poll() is not None:
            break
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does to torchrun, which passes it on to every process
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert err.count("saved step") == 1, err  # rank 0 alone saved, after the step every process stopped at
    step = torch.load(out, weights_only=True)["step"]
    assert 200 <= step < 100000
    result = book_train(out, "--steps", step + 2, "--quiet", processes=2)
    assert result.returncode == 0, result.stderr
    assert f"resuming {out} from step {step}" in result.stderr
    assert torch.load(out, weights_only=True)["step"] == step + 2


# --- Beyond the easy case: targets of different lengths, dropout, accumulation (spawned gloo processes).

SETTINGS = TrainConfig(d_model=16, num_heads=2, num_layers=1, d_ff=32, batch_size=16, warmup=3, cooldown=0, steps=10)
# Largest gradient difference over the largest gradient entry, two processes against one on the whole batch:
# measured 2.6e-07 with the loss over every target token of the global batch (2.1e-07 accumulated), 1.24
# with the mean of the slices' means. Weights after the step, key biases aside: 1.2e-07 against 0.048.
SAME_STEP_TOLERANCE = 1e-5


def uneven_pairs():
    """16 (source, target) pairs: short targets in the first half, long ones in the second."""
    examples = sample_examples(SPLIT.train, 16, seed=0, step=1)
    return [(ex.source, ex.target[:2]) for ex in examples[:8]] + [(ex.source, ex.source) for ex in examples[8:]]


def _same_everywhere(tensor, world_size):
    copies = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(copies, tensor)
    return all(torch.equal(copies[0], c) for c in copies)


def _spawned(rank, world_size, init_file, out):
    """One of the processes started by spawned_results: the steps, the accumulation and the dropout masks."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        processes = Processes(rank=rank, world_size=world_size, local_rank=rank, device=torch.device("cpu"))
        pairs = uneven_pairs()
        b = len(pairs) // world_size
        mine = pairs[rank * b:(rank + 1) * b]
        results = {}
        for name, loss_fn in (("global", GlobalTokenLoss()), ("mean of means", None)):
            model = wrap(build_model(SETTINGS, TOKENIZER), processes)
            train_step(model, make_optimizer(model), make_batch(mine, TOKENIZER), 1, SETTINGS, loss_fn)
            results[name] = {"grads": {n: p.grad.clone() for n, p in model.module.named_parameters()},
                             "weights": {n: t.clone() for n, t in model.module.state_dict().items()},
                             "loss": None if loss_fn is None else loss_fn.loss}
        model = wrap(build_model(SETTINGS, TOKENIZER), processes)
        accumulate_gradients(model, [make_batch(mine[:3], TOKENIZER), make_batch(mine[3:], TOKENIZER)],
                             SETTINGS.label_smoothing)
        results["accumulated"] = {"grads": {n: p.grad.clone() for n, p in model.module.named_parameters()}}
        # Dropout: build as the command line does (same seed everywhere), then draw masks on the same rows.
        noisy = build_model(dataclasses.replace(SETTINGS, dropout=0.3), TOKENIZER).train()
        weights = torch.cat([p.detach().flatten() for p in noisy.parameters()])
        rows = make_batch(pairs[:4], TOKENIZER)
        with torch.no_grad():
            before = noisy(rows.src, rows.tgt_in)
            seed_dropout(SETTINGS.seed, 1, rank)
            after = noisy(rows.src, rows.tgt_in)
        results["same"] = {name: _same_everywhere(t, world_size)
                           for name, t in (("weights", weights), ("before", before), ("after", after))}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spawned")
    torch.multiprocessing.spawn(_spawned, args=(2, str(folder / "rendezvous"), str(folder / "results.pt")), nprocs=2)
    return torch.load(folder / "results.pt", weights_only=True)


@pytest.fixture(scope="module")
def one_process_step():
    """One process's step on the whole batch of uneven_pairs: gradients, weights and loss."""
    model = build_model(SETTINGS, TOKENIZER)
    loss_fn = GlobalTokenLoss()
    loss, _ = train_step(model, make_optimizer(model), make_batch(uneven_pairs(), TOKENIZER), 1, SETTINGS, loss_fn)
    assert loss_fn.loss == pytest.approx(loss, rel=1e-6)  # one process: chapter 8's loss, unchanged
    return {"grads": {n: p.grad.clone() for n, p in model.named_parameters()}, "weights": model.state_dict(),
            "loss": loss}


def assert_same_step(result, reference):
    """Two processes' step equals one process's on the whole batch, to rounding."""
    scale = max(g.abs().max().item() for g in reference["grads"].values())
    gap = max((result["grads"][n] - g).abs().max().item() for n, g in reference["grads"].items()) / scale
    assert gap < SAME_STEP_TOLERANCE, f"gradients differ by {gap:.2e} of the largest entry"


def test_two_processes_take_one_process_step_with_targets_of_different_lengths(spawned_results, one_process_step):
    counts = [(make_batch(half, TOKENIZER).tgt_out != TOKENIZER.pad_id).sum().item()
              for half in (uneven_pairs()[:8], uneven_pairs()[8:])]
    assert counts[0] * 3 < counts[1], counts  # the slices hold very different numbers of target tokens
    assert_same_step(spawned_results["global"], one_process_step)
    assert spawned_results["global"]["loss"] == pytest.approx(one_process_step["loss"], rel=1e-6)
    a, b = spawned_results["global"]["weights"], one_process_step["weights"]
    # Adam's first step is about lr * g / (|g| + eps): a key bias, whose exact gradient is 0, moves on rounding noise.
    assert max((a[n] - b[n]).abs().max().item() for n in a if not n.endswith("k_proj.bias")) < 1e-6
    # The mean of the slices' means, what DDP gives with chapter 8's loss, fails the same check.
    with pytest.raises(AssertionError, match="gradients differ"):
        assert_same_step(spawned_results["mean of means"], one_process_step)


def test_accumulated_micro_batches_give_the_whole_batch_gradient(spawned_results, one_process_step):
    # Two processes, each accumulating two micro-batches of different sizes and lengths under no_sync.
    assert_same_step(spawned_results["accumulated"], one_process_step)
    # One process, four micro-batches.
    model = build_model(SETTINGS, TOKENIZER)
    pairs = uneven_pairs()
    accumulate_gradients(model, [make_batch(pairs[k:k + 4], TOKENIZER) for k in range(0, 16, 4)],
                         SETTINGS.label_smoothing)
    assert_same_step({"grads": {n: p.grad for n, p in model.named_parameters()}}, one_process_step)
    with pytest.raises(ValueError, match="micro_batches must be a non-empty list"):
        accumulate_gradients(model, [], SETTINGS.label_smoothing)


def test_each_process_draws_its_own_dropout_masks_from_the_same_initial_weights(spawned_results):
    same = spawned_results["same"]
    assert same["weights"], "the initial weights differ between processes"
    assert same["before"], "without seed_dropout the processes share the generator's state (the old behaviour)"
    assert not same["after"], "after seed_dropout the processes must draw different masks"


def test_seed_dropout_is_reproducible_and_checks_its_arguments():
    draws = []
    for rank in (0, 0, 1):
        seed_dropout(5, 3, rank)
        draws.append(torch.rand(4))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    seed_dropout(5, 4, 0)
    assert not torch.equal(torch.rand(4), draws[0])  # another step, other masks
    for args, message in (((5, 0, 0), "step must be a positive integer"), ((5, 1, -1), "rank must be"),
                          ((-1, 1, 0), "seed must be an integer")):
        with pytest.raises(ValueError, match=message):
            seed_dropout(*args)


def test_the_history_under_torchrun_is_the_global_batchs(runs):
    one, two, _ = runs
    h1, h2 = (torch.load(path, weights_only=True)["history"] for path in (one, two))
    assert len(h1["loss"]) == len(h2["loss"]) == 4
    # Step 1 starts from the same weights on the same 16 dates: the same loss, to rounding.
    assert h2["loss"][0] == pytest.approx(h1["loss"][0], rel=1e-6)
    assert h2["token_accuracy"][0] == pytest.approx(h1["token_accuracy"][0], abs=1e-6)
    assert h2["loss"] == pytest.approx(h1["loss"], rel=1e-4)
    # Rank 0's half of the batch alone, what the history held before, is far from it.
    settings = TrainConfig(d_model=16, num_heads=2, num_layers=1, d_ff=32, batch_size=16, warmup=3, cooldown=0)
    model = build_model(settings, TOKENIZER)
    half = batch_slice(SPLIT.train, TOKENIZER, 16, settings.seed, 1, 0, 2)
    with torch.no_grad():
        half_loss = label_smoothed_cross_entropy(model(half.src, half.tgt_in), half.tgt_out, 0.1, TOKENIZER.pad_id)
    assert half_loss.item() != pytest.approx(h1["loss"][0], rel=1e-4)
