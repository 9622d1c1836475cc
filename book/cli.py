"""The command line: train the book's models (dates, pronunciations, text, your own pairs), then use them.

Usage::

    python -m book train --out date-model.pt [--seed S] [--steps N] [--device auto|cpu|cuda]
    torchrun --nproc-per-node N -m book train --out date-model.pt ...   # N processes (chapter 12)
    python -m book translate date-model.pt "25 November 2026"     # prints 2026-11-25
    python -m book translate date-model.pt < dates.txt             # one answer per line
    python -m book translate date-model.pt --beam 4 "25 November 2026"   # beam search (chapter 9)
    python -m book train --task pronounce --out g2p.pt           # words to phones (chapter 13)
    python -m book translate g2p.pt phoenix knight               # one pronunciation per line
    python -m book train --pairs FILE.tsv --out own.pt           # your own tab-separated pairs
    python -m book train --task text [--text FILE] --out lm.pt    # a GPT on text (chapter 14)
    python -m book generate lm.pt "The with statement" --temperature 0.8 --seed 1

``train`` uses each task's defaults (for dates ``book.train.TrainConfig``: tied embeddings, the paper's
schedule with a cooldown over the last steps; ``--help`` lists every task's), shows a progress bar on
stderr and saves a checkpoint every ``--save-every`` steps and at the end. Ctrl-C stops after
the current step and saves; running the same command again resumes from the checkpoint and
ends with the same weights as a run that was never interrupted.

Under torchrun every process trains on 1/N of each global batch and DistributedDataParallel
averages the gradients (``book.distributed``); the loss is the mean over every target token of the
global batch, so each step equals the one-process step to rounding (whole runs drift apart as
rounding makes them, chapter 12), each process draws its own dropout masks, and the history holds
the global batch's loss. Only rank 0 prints and writes the checkpoint; a Ctrl-C stops every process
after the same step. ``--device cuda`` where there is no CUDA, a batch that does not split into N
equal parts, or a ``--cooldown`` longer than ``--steps``, is one line on stderr and exit status 2.

Exit status: 0 success; 1 some input could not be read (each such line gets an empty output
line and a message on stderr); 2 bad arguments, or a checkpoint that cannot be read or saved
(a failed save leaves the last good one in place); 130 interrupted.
"""
import argparse
import dataclasses
import os
import signal
import stat
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from book.data import CharTokenizer, date_tokenizer, examples_for, split_dates
from book.decoding import translate_beam
from book.distributed import (GlobalTokenLoss, any_process, batch_slice, finish, local_batch_size, pick_device,
                              seed_dropout, start, wrap)
from book.gpt import GPT, GPTConfig, GPTTranslator
from book.pronounce import (PRONOUNCE_TASK, PAIRS_SETTINGS, PhoneTokenizer, batch_of_pairs, build_translator,
                             char_tokenizers, pronounce, read_pairs)
from book.sampling import sample
from book.tokenizer import TEXT_TASK, BPETokenizer
from book.train import TrainConfig, build_model, exact_match, make_optimizer, new_history, train, translate
from book.transformer import Transformer, TransformerConfig

CHECKPOINT_KIND = "transformer-from-scratch/date-reader"
CHECKPOINT_VERSION = 1
TEXT_KIND = "transformer-from-scratch/text-gpt"  # chapter 14's GPT, written by train --task text
PAIRS_KIND = "transformer-from-scratch/translator"  # chapter 13's: train --task pronounce or --pairs FILE
KIND_NAMES = {CHECKPOINT_KIND: "a date reader (python -m book translate reads it)",
              TEXT_KIND: "a text model (python -m book generate reads it)",
              PAIRS_KIND: "a translator of words or pairs (python -m book translate reads it)"}
MAX_LINE_CHARS = 100  # the longest date the formats produce has 29 characters
TRANSLATE_CHUNK = 256  # lines translated together when reading stdin
MAX_SEED = 2**63 - 1  # torch.manual_seed takes up to 2**64 - 1, but book.train.TrainConfig stops here

# Options that size the model or the run: (argparse dest, TrainConfig field).
SIZE_OPTIONS = (("d_model", "d_model"), ("heads", "num_heads"), ("layers", "num_layers"),
                ("d_ff", "d_ff"), ("batch_size", "batch_size"), ("warmup", "warmup"), ("cooldown", "cooldown"))


class CheckpointError(Exception):
    """A checkpoint that is missing, damaged, not ours or cannot be saved; the message is one line."""


def _one_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _temporary_beside(path):
    """(fd, name) of a new file in path's directory, so that os.replace onto ``path`` is atomic."""
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def _mode_for(path):
    """The mode ``path`` should have: the old file's, else what open() gives a new file (0o666 less the umask)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        return 0o666 & ~umask


def _write_atomically(path, state):
    """torch.save to a temporary file beside ``path``, flushed to disk, then os.replace onto it."""
    fd, tmp = _temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))  # mkstemp makes it 0600, which os.replace would keep
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def checkpoint_state(model, optimizer, tokenizer, settings, step, history):
    """Everything a resumed run of the date reader needs: tensors, dicts, lists, strings and numbers only,
    so the file loads with torch.load(..., weights_only=True)."""
    return {
        "kind": CHECKPOINT_KIND,
        "version": CHECKPOINT_VERSION,
        "settings": dataclasses.asdict(settings),
        "model_config": dataclasses.asdict(model.config),
        "alphabet": tokenizer.alphabet,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "rng_state": torch.get_rng_state(),
        "history": history,
    }


def save_checkpoint(path, model, optimizer, tokenizer, settings, step, history):
    """Write checkpoint_state atomically: a temporary file beside ``path``, then os.replace."""
    _write_atomically(Path(path), checkpoint_state(model, optimizer, tokenizer, settings, step, history))


def load_checkpoint(path, device="cpu", kind=CHECKPOINT_KIND):
    """Read and check a checkpoint written by save_checkpoint, its tensors on ``device``; raises CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({_one_line(exc)})") from None
    except Exception as exc:  # truncated zip, foreign pickle, plain text, ...
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, truncated or foreign ({type(exc).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("kind") not in KIND_NAMES:
        raise CheckpointError(f"{path}: a PyTorch file, but not a checkpoint written by 'python -m book train'")
    if state["kind"] != kind:
        raise CheckpointError(f"{path}: this checkpoint is {KIND_NAMES[state['kind']]}; expected {KIND_NAMES[kind]}")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {state.get('version')!r}, this program reads version {CHECKPOINT_VERSION}"
        )
    expected = {"settings": dict, "model_config": dict, "alphabet": str, "model": dict,
                "optimizer": dict, "step": int, "rng_state": torch.Tensor, "history": dict}
    if kind == TEXT_KIND:
        del expected["alphabet"]
        expected.update(merges=list, source=str)
    if kind == PAIRS_KIND:
        expected.update(source=str, targets=list, max_output=int)
    for key, kind in expected.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{path}: damaged checkpoint, entry {key!r} is missing or not a {kind.__name__}")
    return state


def model_from_checkpoint(state, path="checkpoint", device=None):
    """(model, tokenizer, settings) rebuilt from a loaded checkpoint, the model on ``device``; raises CheckpointError."""
    try:
        tokenizer = CharTokenizer(state["alphabet"])
        settings = TrainConfig(**state["settings"])
        model = Transformer(TransformerConfig(**state["model_config"])).to(device)
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint ({_one_line(exc)})") from None
    if model.config.src_vocab_size != len(tokenizer) or model.config.tgt_vocab_size != len(tokenizer):
        raise CheckpointError(f"{path}: damaged checkpoint, the vocabulary does not match the model")
    return model, tokenizer, settings


def _say(message):
    print(message, file=sys.stderr, flush=True)


def _main_process():
    """True unless this is a process of rank > 0 under torchrun (only rank 0 speaks)."""
    return os.environ.get("RANK", "0") == "0"


def _say_once(message):
    if _main_process():
        _say(message)


def _requested_settings(args):
    """The TrainConfig fields given on the command line (options left out are not listed)."""
    given = {field: getattr(args, dest) for dest, field in SIZE_OPTIONS if getattr(args, dest) is not None}
    if args.seed is not None:
        given["seed"] = args.seed
    if getattr(args, "dropout", None) is not None:
        given["dropout"] = args.dropout
    return given


def cmd_train(args):
    out = Path(args.out)
    if not out.parent.is_dir():
        _say_once(f"error: the directory of {out} does not exist")
        return 2
    try:  # the first save comes after training; a directory we may not write must fail before it
        fd, tmp = _temporary_beside(out)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        _say_once(f"error: cannot save to {out}: its temporary file .{out.name}.XXXXXXXX.tmp "
                  f"cannot be created ({exc.strerror or _one_line(exc)})")
        return 2
    try:
        processes = start(args.device)  # one process, or one of torchrun's N
    except ValueError as exc:
        _say_once(f"error: {_one_line(exc)}")
        return 2
    try:
        if args.task == "text":
            return _train_text(args, out, processes)
        if args.task == "pronounce" or args.pairs is not None:
            return _train_pairs(args, out, processes)
        return _train(args, out, processes)
    except _Exit as stop:
        if stop.message:
            _say_once(stop.message)
        return stop.code
    finally:
        finish()


class _Exit(Exception):
    """Leave ``train`` with exit status ``code``, after rank 0 says ``message`` (if any) on stderr."""

    def __init__(self, code, message=None):
        super().__init__(message)
        self.code, self.message = code, message


def _refuse(exc):
    return _Exit(2, f"error: {_one_line(exc)}")


def _clashes(requested, settings, data=None, stored_data=None):
    """What the command line asks for that the checkpoint's run did otherwise (an empty list if nothing)."""
    found = [f"{name}={value} (checkpoint has {getattr(settings, name)})"
             for name, value in requested.items() if getattr(settings, name) != value]
    if data != stored_data:
        found.append(f"data {data} (checkpoint has {stored_data})")
    return found


def _resumed_settings(out, settings, args, requested, data=None, stored_data=None):
    """A checkpoint's settings with the new --steps; refused if other options ask for another run."""
    clashes = _clashes(requested, settings, data, stored_data)
    if clashes:
        raise _Exit(2, f"error: {out} was trained with other settings: {', '.join(clashes)}; "
                       f"use another --out to start a new run")
    return settings if args.steps is None else dataclasses.replace(settings, steps=args.steps)


def _begin(out, state, model, settings, processes):
    """(optimizer, steps done, history) for a new run (state None) or one resumed from its checkpoint."""
    try:
        local_batch_size(settings.batch_size, processes.world_size)  # torchrun's N must divide the batch
    except ValueError as exc:
        raise _refuse(exc) from None
    if settings.cooldown > settings.steps:  # the rate would be scaled down from the first step on
        raise _Exit(2, f"error: a cooldown of {settings.cooldown} steps is longer than the run's {settings.steps} "
                       f"steps; use --cooldown {settings.steps} or less (0: the paper's schedule)")
    if state is None:
        return make_optimizer(model), 0, new_history()
    optimizer, start, history = _resumed(model, state, out)
    if start >= settings.steps:
        raise _Exit(0, f"{out} is already trained to step {start} (asked for {settings.steps}); nothing to do")
    return optimizer, start, history


def _run_training(args, out, processes, model, optimizer, settings, start, history, next_batch, state_of,
                  validate=None, loss_fn=None):
    """The loop every task shares: train from ``start`` to settings.steps, saving as it goes.

    Saves ``state_of(step, history)`` atomically every --save-every steps and at the end. The first
    Ctrl-C stops every process after the same step and saves; a second quits at once, keeping the last
    save. Returns normally only when the run is complete.
    """
    interrupted = []

    def save(step, history):
        try:
            _write_atomically(out, state_of(step, history))
        except OSError as exc:  # disk full, directory made read-only, ...: the last save is still whole
            raise CheckpointError(f"cannot save step {step} to {out} ({exc.strerror or _one_line(exc)}); "
                                  f"{out} holds the last save, if any") from None

    def on_interrupt(signum, frame):
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)
        if processes.is_main:
            tqdm.write("interrupted: finishing this step, then saving (Ctrl-C again to quit without saving)",
                       file=sys.stderr)

    def after_step(step, history):
        if loss_fn is not None:
            loss_fn.record(history)  # the global batch's loss, not this process's slice's
        if any_process(bool(interrupted), processes):  # every process stops after the same step
            return True
        if processes.is_main and step % args.save_every == 0 and step < settings.steps:
            save(step, history)
        return False

    previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    try:
        history = train(wrap(model, processes), optimizer, next_batch, settings, start_step=start, history=history,
                        validate=validate if processes.is_main else None, after_step=after_step,
                        progress=processes.is_main and not args.quiet, loss_fn=loss_fn)
        step = history["step"][-1] if history["step"] else start
        if processes.is_main:  # still under our handler: Ctrl-C cannot cut it short
            save(step, history)
    except KeyboardInterrupt:
        raise _Exit(130, f"stopped without saving; {out} holds the last periodic save, if any") from None
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    if step < settings.steps:  # stopped early: a Ctrl-C here or in another process
        raise _Exit(130, f"saved step {step} of {settings.steps} to {out}; run the same command again to resume")
    if not processes.is_main:
        raise _Exit(0)


def _train(args, out, processes):
    """The dates (chapter 8): book.train's model and recipe, scored by exact match on the test dates."""
    device, requested, state = processes.device, _requested_settings(args), None
    try:
        if out.exists():
            state = load_checkpoint(out, device)  # a foreign file is never overwritten: CheckpointError
            model, tokenizer, settings = model_from_checkpoint(state, out, device)
            settings = _resumed_settings(out, settings, args, requested)
        else:
            settings = TrainConfig(**requested, **({} if args.steps is None else {"steps": args.steps}))
            tokenizer = date_tokenizer()
            model = build_model(settings, tokenizer, device)
    except ValueError as exc:
        raise _refuse(exc) from None
    optimizer, start, history = _begin(out, state, model, settings, processes)
    say = _say if processes.is_main else (lambda message: None)
    say(f"resuming {out} from step {start} of {settings.steps}" if state else
        f"training a new model, {settings.steps} steps, seed {settings.seed}; saving to {out}")
    if processes.world_size > 1:
        say(f"{processes.world_size} processes on {device.type}, "
            f"{settings.batch_size // processes.world_size} examples each of every batch of {settings.batch_size}")
    split = split_dates()
    valid = examples_for(split.valid)

    def next_batch(step):
        seed_dropout(settings.seed, step, processes.rank)  # masks of this process's own, the same after a resume
        return batch_slice(split.train, tokenizer, settings.batch_size, settings.seed, step,
                           processes.rank, processes.world_size, device)

    _run_training(args, out, processes, model, optimizer, settings, start, history, next_batch,
                  lambda step, history: checkpoint_state(model, optimizer, tokenizer, settings, step, history),
                  validate=lambda _: exact_match(model, tokenizer, valid)[0], loss_fn=GlobalTokenLoss())
    accuracy, _ = exact_match(model, tokenizer, examples_for(split.test))
    print(f"trained {settings.steps} steps; exact match on {len(split.test)} test dates: {100 * accuracy:.2f}%; "
          f"saved to {out}")
    return 0


def _train_text(args, out, processes):
    """--task text: chapter 14's GPT; what the task reads, trains and prints is book.tokenizer.TEXT_TASK."""
    task, device, state = TEXT_TASK, processes.device, None
    requested, source = _requested_settings(args), str(args.text or "documentation")
    try:
        text = task.read(args.text)
        if out.exists():
            state = load_checkpoint(out, device, kind=TEXT_KIND)
            model, tokenizer, settings = text_model_from_checkpoint(state, out, device)
            settings = _resumed_settings(out, settings, args, requested, source, state["source"])
        else:
            settings = dataclasses.replace(task.settings, **requested,
                                           **({} if args.steps is None else {"steps": args.steps}))
            tokenizer = None
        tokenizer, train_ids, held_ids, held_bytes = task.prepare(text, tokenizer)
    except ValueError as exc:
        raise _refuse(exc) from None
    if state is None:
        model = task.model(settings, tokenizer, device)
    optimizer, start, history = _begin(out, state, model, settings, processes)
    _say_once(f"training a GPT on {source} ({len(train_ids):,} tokens of {len(tokenizer)}), steps {start + 1} to "
              f"{settings.steps}, seed {settings.seed}; saving to {out}")

    def state_of(step, history):
        return {"kind": TEXT_KIND, "version": CHECKPOINT_VERSION, "settings": dataclasses.asdict(settings),
                "model_config": dataclasses.asdict(model.config), "merges": [list(p) for p, _ in tokenizer.merges],
                "source": source, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "rng_state": torch.get_rng_state(), "history": history}

    _run_training(args, out, processes, model, optimizer, settings, start, history,
                  lambda step: task.batch(train_ids, settings, step, processes.rank, processes.world_size, device),
                  state_of)
    print(f"trained {settings.steps} steps; held-out text: {task.score(model, held_ids, held_bytes)}; saved to {out}")
    return 0


def _train_pairs(args, out, processes):
    """--task pronounce (chapter 13's dictionary) or --pairs FILE (characters as tokens): an encoder-decoder.

    What the pronounce task reads, builds and scores is book.pronounce.PRONOUNCE_TASK; a pairs file is
    read by book.pronounce.read_pairs.
    """
    device, requested, state = processes.device, _requested_settings(args), None
    source = "pronounce" if args.pairs is None else str(args.pairs)
    try:
        if args.pairs is None:
            split, letters, phones, pairs = PRONOUNCE_TASK.data()
        else:
            pairs = read_pairs(args.pairs)
            letters, phones = char_tokenizers(pairs)
        if out.exists():
            state = load_checkpoint(out, device, kind=PAIRS_KIND)
            model, letters, phones, settings = translator_from_checkpoint(state, out, device)
            settings = _resumed_settings(out, settings, args, requested, source, state["source"])
        else:
            settings = dataclasses.replace(PRONOUNCE_TASK.settings if args.pairs is None else PAIRS_SETTINGS,
                                           **requested, **({} if args.steps is None else {"steps": args.steps}))
    except ValueError as exc:
        raise _refuse(exc) from None
    if state is None and args.pairs is None:
        model = PRONOUNCE_TASK.model(settings, letters, phones, device)
    elif state is None:  # room for the longest source, and for answers up to twice the longest target
        longest = max(max(len(s) for s, _ in pairs), 2 * max(len(t) for _, t in pairs)) + 1
        model = build_translator(settings, letters, phones, device, PRONOUNCE_TASK.norm_first, max(longest, 32))
    optimizer, start, history = _begin(out, state, model, settings, processes)
    max_output = PRONOUNCE_TASK.max_phones if args.pairs is None else model.config.max_len - 1
    _say_once(f"training a translator on {source} ({len(pairs):,} pairs), steps {start + 1} to {settings.steps}, "
              f"seed {settings.seed}; saving to {out}")
    targets = phones.phones if isinstance(phones, PhoneTokenizer) else list(phones.alphabet)

    def next_batch(step):
        seed_dropout(settings.seed, step, processes.rank)
        return batch_of_pairs(pairs, letters, phones, settings, step, processes.rank, processes.world_size, device)

    def state_of(step, history):
        return {"kind": PAIRS_KIND, "version": CHECKPOINT_VERSION, "settings": dataclasses.asdict(settings),
                "model_config": dataclasses.asdict(model.config), "alphabet": letters.alphabet,
                "targets": targets, "phones": isinstance(phones, PhoneTokenizer), "source": source,
                "max_output": max_output, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "rng_state": torch.get_rng_state(), "history": history}

    _run_training(args, out, processes, model, optimizer, settings, start, history, next_batch, state_of,
                  loss_fn=GlobalTokenLoss())
    if args.pairs is None:
        scores = PRONOUNCE_TASK.scores(model, letters, phones, split.test)
        print(f"trained {settings.steps} steps; {len(split.test):,} test words, beam {PRONOUNCE_TASK.beam_size}: "
              + ", ".join(f"{name} {100 * value:.1f}%" for name, value in scores.items()) + f"; saved to {out}")
    else:
        print(f"trained {settings.steps} steps on {len(pairs):,} pairs; saved to {out}")
    return 0


def translator_from_checkpoint(state, path="checkpoint", device=None):
    """(model, source tokenizer, target tokenizer, settings) from a --task pronounce or --pairs checkpoint."""
    try:
        letters = CharTokenizer(state["alphabet"])
        phones = PhoneTokenizer(state["targets"]) if state.get("phones") else CharTokenizer("".join(state["targets"]))
        settings = TrainConfig(**state["settings"])
        model = Transformer(TransformerConfig(**state["model_config"])).to(device)
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint ({_one_line(exc)})") from None
    if model.config.src_vocab_size != len(letters) or model.config.tgt_vocab_size != len(phones):
        raise CheckpointError(f"{path}: damaged checkpoint, the vocabularies do not match the model")
    return model, letters, phones, settings


def text_model_from_checkpoint(state, path="checkpoint", device=None):
    """(GPTTranslator, BPETokenizer, settings) from a loaded text checkpoint; raises CheckpointError."""
    try:
        tokenizer = BPETokenizer([((a, b), 256 + i) for i, (a, b) in enumerate(state["merges"])])
        settings = TrainConfig(**state["settings"])
        model = GPTTranslator(GPT(GPTConfig(**state["model_config"]))).to(device)
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint ({_one_line(exc)})") from None
    return model, tokenizer, settings


def cmd_generate(args):
    problems = [(args.temperature < 0, f"--temperature must be >= 0, got {args.temperature}"),
                (not 0 < args.top_p <= 1, f"--top-p must be in (0, 1], got {args.top_p}"),
                (args.top_k is not None and args.top_k < 1, f"--top-k must be >= 1, got {args.top_k}"),
                (args.max_new_tokens < 1, f"--max-new-tokens must be >= 1, got {args.max_new_tokens}"),
                (not 0 <= args.seed <= MAX_SEED, f"--seed must be an integer from 0 to {MAX_SEED}, got {args.seed}")]
    for bad, message in problems:
        if bad:
            _say(f"error: {message}")
            return 2
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        _say(f"error: {_one_line(exc)}")
        return 2
    model, tokenizer, _ = text_model_from_checkpoint(load_checkpoint(args.checkpoint, device, kind=TEXT_KIND),
                                                     args.checkpoint, device)
    ids = tokenizer.encode(args.prompt)
    context = model.config.max_len
    if not ids or len(ids) + args.max_new_tokens > context:
        _say(f"error: the prompt is {len(ids)} tokens and --max-new-tokens {args.max_new_tokens}; together they "
             f"must fit the model's context of {context} tokens, with at least one token of prompt")
        return 2
    generator = torch.Generator(device).manual_seed(args.seed)
    out = sample(model.gpt, torch.tensor([ids], device=device), args.max_new_tokens, args.temperature,
                 args.top_k, args.top_p, generator)
    print(TEXT_TASK.write(tokenizer, out[0, len(ids):].tolist()))
    return 0


def _read_lines(args):
    """(label, text) for every input: the command-line texts, else the lines of stdin."""
    if args.text:
        for i, text in enumerate(args.text, start=1):
            yield f"argument {i}", text
    elif not hasattr(sys.stdin, "buffer"):  # a text stream without bytes under it (io.StringIO, say)
        for i, line in enumerate(sys.stdin, start=1):
            yield f"line {i}", line.rstrip("\r\n")
    else:  # bytes, decoded line by line: a line that is not valid text gets its message, the rest answers
        encoding = sys.stdin.encoding or "utf-8"
        for i, line in enumerate(sys.stdin.buffer, start=1):
            yield f"line {i}", line.decode(encoding, errors="surrogateescape").rstrip("\r\n")


def _problem(text, tokenizer, limit=MAX_LINE_CHARS):
    """Why ``text`` cannot be read, or None when it can."""
    if not text.strip():
        return "empty line"
    if len(text.strip()) > limit:
        return f"{len(text.strip())} characters, longer than this model reads (at most {limit})"
    try:
        tokenizer.encode(text.strip())
    except ValueError as exc:
        return str(exc)
    return None


def cmd_translate(args):
    if args.beam is not None and args.beam < 1:
        _say(f"error: --beam must be an integer >= 1, got {args.beam}")
        return 2
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        _say(f"error: {_one_line(exc)}")
        return 2
    state = _any_checkpoint(args.checkpoint, device)
    if state["kind"] == PAIRS_KIND:  # chapter 13's: words to phones, or the user's own pairs
        model, tokenizer, target, _ = translator_from_checkpoint(state, args.checkpoint, device)
        pronouncing = state["source"] == "pronounce"
        beam = args.beam or (PRONOUNCE_TASK.beam_size if pronouncing else 1)
        limit = model.config.max_len - 1

        def answer(texts):
            texts = [t.lower() for t in texts] if pronouncing else texts  # the dictionary's words are lower case
            return pronounce(model, tokenizer, target, texts, beam, state["max_output"])
    else:
        model, tokenizer, _ = model_from_checkpoint(state, args.checkpoint, device)
        beam, limit = args.beam or 1, MAX_LINE_CHARS

        def answer(texts):
            if beam > 1:  # beam search with K hypotheses per date (chapter 9)
                return translate_beam(model, tokenizer, texts, beam_size=beam)
            return translate(model, tokenizer, texts)
    model.eval()
    failed = False
    chunk = []

    def flush():
        texts = [text.strip() for _, text, problem in chunk if problem is None]
        answers = iter(answer(texts)) if texts else iter(())
        for label, text, problem in chunk:
            if problem is None:
                print(next(answers))
            else:
                print()
        sys.stdout.flush()
        chunk.clear()

    for label, text in _read_lines(args):
        problem = _problem(text.lower() if state["kind"] == PAIRS_KIND and pronouncing else text, tokenizer, limit)
        if problem is not None:
            failed = True
            _say(f"{label}: {problem}")
        chunk.append((label, text, problem))
        if len(chunk) == TRANSLATE_CHUNK or (not args.text and sys.stdin.isatty()):
            flush()
    flush()
    return 1 if failed else 0



def _any_checkpoint(path, device):
    """A date reader's or a translator's checkpoint, whichever ``path`` holds (CheckpointError otherwise)."""
    try:
        return load_checkpoint(path, device, kind=PAIRS_KIND)
    except CheckpointError as exc:
        if "this checkpoint is a date reader" not in str(exc):
            raise
    return load_checkpoint(path, device)


def _resumed(model, state, out):
    """The optimizer, step and history a checkpoint's run stopped at; the random state restored too."""
    optimizer = make_optimizer(model)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{out}: damaged optimizer state ({_one_line(exc)})") from None
    torch.set_rng_state(state["rng_state"].cpu())
    return optimizer, state["step"], state["history"]

def _task_defaults(field):
    """'64 (dates), 128 (pronounce), ...': a TrainConfig field's default in each task, for --help."""
    defaults = {"dates": TrainConfig(), "pronounce": PRONOUNCE_TASK.settings, "text": TEXT_TASK.settings,
                "--pairs": PAIRS_SETTINGS}
    return ", ".join(f"{getattr(settings, field)} ({task})" for task, settings in defaults.items())


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m book", description="Train the book's Transformers (dates, pronunciations, text, your own pairs) and use them."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    t = commands.add_parser("train", help="train a model (or resume one) and save a checkpoint")
    t.add_argument("--out", required=True, help="checkpoint file; if it exists, training resumes from it")
    t.add_argument("--seed", type=int, help="seed for the initial weights and the batches (default 0)")
    t.add_argument("--steps", type=int, help=f"total number of steps (default {_task_defaults('steps')})")
    t.add_argument("--save-every", type=int, default=200, help="save a checkpoint every N steps (default 200)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to train: auto (the default) takes the GPU when PyTorch sees one (CUDA)")
    t.add_argument("--task", choices=("dates", "pronounce", "text"), default="dates",
                   help="dates (chapter 8, the default), pronounce (chapter 13's words to phones) or text "
                        "(chapter 14's GPT)")
    t.add_argument("--pairs", metavar="FILE", help="train on your own tab-separated (source, target) lines, "
                   "characters as tokens")
    t.add_argument("--text", metavar="FILE", help="--task text: a UTF-8 file to train on (default: Python's documentation)")
    t.add_argument("--dropout", type=float, metavar="P", help="the model's dropout (default: the task's own)")
    size = t.add_argument_group("model, batch and schedule (defaults: each task's own)")
    notes = {"cooldown": "steps at the end over which the learning rate falls towards 0, at most --steps; 0 keeps "
                         "the paper's schedule. A resumed run with a larger --steps moves the cooldown to the new end; "}
    for dest, field in SIZE_OPTIONS:
        values = _task_defaults(field)
        size.add_argument(f"--{dest.replace('_', '-')}", dest=dest, type=int,
                          help=f"{notes.get(dest, '')}default {values}")

    r = commands.add_parser("translate", help="read dates (or words, or the sources of your pairs), write the answers")
    r.add_argument("checkpoint", help="a file written by 'python -m book train'")
    r.add_argument("text", nargs="*", help="texts to read; without any, one per line from stdin")
    r.add_argument("--beam", type=int, metavar="K",
                   help="beam search with K hypotheses per input (default: 4 for pronounce, else 1, greedy)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="where the model runs (default cpu; auto takes the GPU when PyTorch sees one)")
    g = commands.add_parser("generate", help="continue a prompt with a text model (train --task text)")
    g.add_argument("checkpoint", help="a file written by 'python -m book train --task text'")
    g.add_argument("prompt", help="the text to continue")
    g.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="tokens to write (default 64)")
    g.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 is greedy (default 0.8)")
    g.add_argument("--top-k", type=int, metavar="K", help="draw only from the K most likely tokens")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P", help="draw from the smallest set of "
                   "tokens whose probability reaches P (default 1: all)")
    g.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="where the model runs")
    return parser


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse gives the texts before an option (translate ckpt --beam 4 "date") back as extra.
    if extra and args.command == "translate" and not any(e.startswith("-") for e in extra):
        args.text += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "train" and args.save_every < 1:
        _say(f"error: --save-every must be >= 1, got {args.save_every}")
        return 2
    if args.command == "train" and args.dropout is not None and not 0 <= args.dropout < 1:
        _say(f"error: --dropout must be in [0, 1), got {args.dropout}")
        return 2
    if args.command == "train" and args.text is not None and args.task != "text":
        _say("error: --text FILE goes with --task text")
        return 2
    if args.command == "train" and args.pairs is not None and args.task != "dates":
        _say(f"error: --pairs FILE is a task of its own; leave out --task {args.task}")
        return 2
    if args.command == "train" and args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        _say(f"error: --seed must be an integer from 0 to {MAX_SEED}, got {args.seed}")
        return 2
    try:
        commands = {"train": cmd_train, "translate": cmd_translate, "generate": cmd_generate}
        return commands[args.command](args)
    except CheckpointError as exc:
        _say(f"error: {exc}")
        return 2
    except BrokenPipeError:  # the reader of our output went away (e.g. `| head`)
        sys.stderr.close()
        return 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
