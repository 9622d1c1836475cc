# Generated from chapters/08_training.ipynb by tools/export.py: edit the notebook, not this file.
"""Training the Transformer to read dates: loss, schedule, loop, decoding (chapter 8)."""
import contextlib
import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm

from book.attention import padding_mask
from book.transformer import Transformer, TransformerConfig


@dataclass
class TrainConfig:
    """The chapter's default run: model size, batch, schedule and step budget."""
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2
    d_ff: int = 256
    dropout: float = 0.0
    share_embeddings: bool = True
    batch_size: int = 128
    warmup: int = 300
    lr_factor: float = 0.5
    cooldown: int = 400
    label_smoothing: float = 0.1
    steps: int = 1500
    eval_every: int = 250
    seed: int = 0

    def __post_init__(self):
        for name in ("batch_size", "warmup", "steps", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.cooldown, int) or isinstance(self.cooldown, bool) or self.cooldown < 0:
            raise ValueError(f"cooldown must be a non-negative integer, got {self.cooldown!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not self.lr_factor > 0:
            raise ValueError(f"lr_factor must be positive, got {self.lr_factor!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2 ** 63:
            raise ValueError(f"seed must be an integer in [0, 2**63), as torch.manual_seed takes, got {self.seed!r}")


def build_model(settings, tokenizer, device=None, target_tokenizer=None):
    """A Transformer sized by ``settings`` whose vocabularies are the tokenizers', seeded by settings.seed.

    ``target_tokenizer`` gives the target vocabulary when it differs from the source's (then
    settings.share_embeddings must be False). The weights are drawn on the CPU and then moved to
    ``device``, so every device starts from the same numbers.
    """
    target_tokenizer = tokenizer if target_tokenizer is None else target_tokenizer
    if settings.share_embeddings and len(target_tokenizer) != len(tokenizer):
        raise ValueError(f"share_embeddings needs one vocabulary, got {len(tokenizer)} source and "
                         f"{len(target_tokenizer)} target tokens; set share_embeddings=False")
    torch.manual_seed(settings.seed)
    config = TransformerConfig(
        src_vocab_size=len(tokenizer), tgt_vocab_size=len(target_tokenizer), d_model=settings.d_model,
        num_heads=settings.num_heads, num_layers=settings.num_layers, d_ff=settings.d_ff,
        dropout=settings.dropout, max_len=128, pad_id=tokenizer.pad_id,
        share_embeddings=settings.share_embeddings,
    )
    return Transformer(config).to(device)


def make_optimizer(model):
    """Adam with the paper's betas and epsilon; the schedule sets the learning rate at every step."""
    return torch.optim.Adam(model.parameters(), lr=0.0, betas=(0.9, 0.98), eps=1e-9)


def label_smoothed_cross_entropy(logits, target, smoothing, pad_id):
    """Cross-entropy against a smoothed target, averaged over the non-padding positions.

    The target puts 1 - smoothing on the right token and spreads smoothing evenly over all
    V tokens, so the loss is (1 - smoothing) * (-log p_y) + smoothing * mean_v(-log p_v).
    logits: (B, T, V); target: (B, T) ids, pad_id where there is nothing to predict.
    Returns a scalar. Equals torch.nn.CrossEntropyLoss(ignore_index=pad_id, label_smoothing=smoothing).
    """
    if logits.dim() != 3 or target.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be (B, T, V) and target (B, T), got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    log_probs = torch.log_softmax(logits, dim=-1)
    keep = target != pad_id
    if not keep.any():
        raise ValueError(f"every target position is padding (pad_id={pad_id}); nothing to learn from")
    log_probs, target = log_probs[keep], target[keep]  # (N, V) and (N,) for the N real positions
    if target.dtype != torch.long or target.min() < 0 or target.max() >= logits.size(-1):
        raise ValueError(f"target must hold token ids (torch.long) in [0, {logits.size(-1)}) or pad_id, got "
                         f"{target.dtype} ids from {target.min().item()} to {target.max().item()}")
    nll = -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
    uniform = -log_probs.mean(dim=1)
    return ((1.0 - smoothing) * nll + smoothing * uniform).mean()


def noam_rate(step, d_model, warmup, factor=1.0):
    """The paper's learning rate: factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5).

    Rises linearly for ``warmup`` steps, then decays as 1/sqrt(step). Steps count from 1.
    """
    if step < 1 or warmup < 1 or d_model < 1:
        raise ValueError(f"step, d_model and warmup must be >= 1, got step={step}, d_model={d_model}, warmup={warmup}")
    return factor * d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


def learning_rate(step, settings, d_model):
    """The rate at ``step``: noam_rate, then straight down over the last settings.cooldown steps.

    In the cooldown the rate is multiplied by (steps - step + 1) / (cooldown + 1): cooldown / (cooldown + 1)
    at its first step, falling by 1 / (cooldown + 1) a step to 1 / (cooldown + 1) at the last;
    cooldown=0 leaves the paper's schedule.
    """
    if step > settings.steps:  # the cooldown would turn the rate negative
        raise ValueError(f"step {step} is past the run's last step, settings.steps={settings.steps}")
    rate = noam_rate(step, d_model, settings.warmup, settings.lr_factor)
    left = settings.steps - step
    if left < settings.cooldown:
        rate *= (left + 1) / (settings.cooldown + 1)
    return rate


def train_step(model, optimizer, batch, step, settings, loss_fn=None):
    """One update at ``step`` (counted from 1). Returns (loss, share of target tokens predicted right).

    batch.src (B, S), batch.tgt_in and batch.tgt_out (B, T); loss_fn(logits, target, smoothing, pad_id)
    defaults to label_smoothed_cross_entropy.
    """
    loss_fn = label_smoothed_cross_entropy if loss_fn is None else loss_fn
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, settings, model.config.d_model)
    model.train()
    logits = model(batch.src, batch.tgt_in)  # (B, T, V): every position predicts the next character
    loss = loss_fn(logits, batch.tgt_out, settings.label_smoothing, model.config.pad_id)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    real = batch.tgt_out != model.config.pad_id
    token_accuracy = (logits.argmax(-1) == batch.tgt_out)[real].float().mean()
    return loss.item(), token_accuracy.item()


def new_history():
    return {"step": [], "loss": [], "token_accuracy": [], "valid_step": [], "valid_accuracy": []}


def train(model, optimizer, next_batch, settings, start_step=0, history=None, validate=None,
          after_step=None, progress=True, loss_fn=None):
    """Train from ``start_step`` + 1 up to settings.steps and return the history (a dict of lists).

    next_batch(step) -> Batch for that step. validate(model) -> a score, recorded every
    settings.eval_every steps and at the end. after_step(step, history) runs after each update;
    when it returns True training stops there (the command line uses it to save and to stop
    on Ctrl-C). loss_fn replaces the label-smoothed loss (see train_step). The progress bar
    goes to stderr.
    """
    history = new_history() if history is None else history
    bar = tqdm(total=settings.steps, initial=start_step, desc="training", unit="step",
               file=sys.stderr, disable=not progress, mininterval=1.0)
    try:
        for step in range(start_step + 1, settings.steps + 1):
            loss, token_accuracy = train_step(model, optimizer, next_batch(step), step, settings, loss_fn)
            history["step"].append(step)
            history["loss"].append(loss)
            history["token_accuracy"].append(token_accuracy)
            if validate is not None and (step % settings.eval_every == 0 or step == settings.steps):
                history["valid_step"].append(step)
                history["valid_accuracy"].append(validate(model))
                bar.set_postfix(loss=f"{loss:.3f}", valid=f"{history['valid_accuracy'][-1]:.3f}")
            bar.update(1)
            if after_step is not None and after_step(step, history):
                break
    finally:
        bar.close()
    return history


@torch.no_grad()
def greedy_decode(model, src, max_len, start_id, end_id):
    """Generate target ids one token at a time, always taking the most likely next token.

    src: (B, S) ids. The encoder runs once; the decoder re-reads the growing output at every
    step. Rows that have produced end_id are padded from then on. Returns (B, <= max_len) ids.
    """
    pad_id = model.config.pad_id
    limit = getattr(model.config, "max_len", None)  # the decoder will read up to max_len positions
    if limit is not None and max_len > limit:
        raise ValueError(f"max_len={max_len} is more than the model's config.max_len={limit}")
    with evaluating(model):
        src_mask = padding_mask(src, pad_id)
        memory = model.encode(src, src_mask)
        out = torch.full((src.size(0), 1), start_id, dtype=torch.long, device=src.device)
        finished = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
        for _ in range(max_len):
            logits = model.decode(out, memory, src_mask)  # (B, t, V); only the last position is new
            next_id = logits[:, -1].argmax(-1)
            next_id = next_id.masked_fill(finished, pad_id)
            out = torch.cat([out, next_id.unsqueeze(1)], dim=1)
            finished |= next_id == end_id
            if finished.all():
                break
    return out[:, 1:]


@contextlib.contextmanager
def evaluating(model):
    """Eval mode (dropout off) inside the block; afterwards, even if the block raised, every
    submodule is back in the mode it was in."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def translate(model, tokenizer, texts, batch_size=500, max_len=16, decode=None, target_tokenizer=None):
    """Read a list of texts, return the model's answer for each, as strings.

    decode(model, src, max_len, start_id, end_id) -> ids writes the answers: greedy_decode unless
    given; later chapters pass their own (chapter 9's cached one, chapter 11's for a decoder-only model).
    ``target_tokenizer`` writes the answers when targets have a vocabulary of their own.
    """
    if isinstance(texts, str):  # a string is a sequence too: of one-character texts
        raise ValueError(f"texts must be a list of strings, got one string {texts!r}; pass [{texts!r}]")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    decode = greedy_decode if decode is None else decode
    writer = tokenizer if target_tokenizer is None else target_tokenizer
    if writer.pad_id != tokenizer.pad_id:
        raise ValueError(f"the source and target tokenizers pad with different ids "
                         f"({tokenizer.pad_id} and {writer.pad_id}); the model has one pad_id")
    answers, device = [], next(model.parameters()).device
    for first in range(0, len(texts), batch_size):
        src = tokenizer.encode_batch(texts[first:first + batch_size], device=device)
        ids = decode(model, src, max_len, writer.start_id, writer.end_id)
        answers.extend(writer.decode_batch(ids))
    return answers


def exact_match(model, tokenizer, examples, decode=None, target_tokenizer=None):
    """Share of Examples (or (source, target) pairs) answered exactly right, and the answers themselves."""
    if not examples:
        raise ValueError("exact_match needs at least one example, got none")
    answers = translate(model, tokenizer, [ex[0] for ex in examples], decode=decode,
                        target_tokenizer=target_tokenizer)
    correct = sum(answer == ex[1] for answer, ex in zip(answers, examples))
    return correct / len(examples), answers
