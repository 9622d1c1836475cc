# Generated from chapters/10_debugging.ipynb by tools/export.py: edit the notebook, not this file.
"""Checks that catch the bugs easy tests miss (chapter 10).

Every model check takes a model with ``forward(src (B, S), tgt (B, T)) -> logits (B, T, V)``
and a ``config.pad_id``, runs it in eval mode (and, for the causal and padding checks, in
train mode too, with dropout held fixed), puts every submodule back in the mode it found it
in, and returns a ``CheckResult``. Differences are judged relative to the size of the logits.
``run_checks`` runs the model checks in order of cost; ``check_overfit`` trains a copy and is
left to the caller.
"""
import contextlib
import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from book.multi_head import MultiHeadAttention
from book.residual import LayerNorm
from book.train import evaluating

# Relative: a difference counts as the largest |difference| divided by the largest |value| compared
# with (the logits, or the torch reference's output). float32 rounding stays far below it.
TOLERANCE = 1e-4


@dataclass
class CheckResult:
    """The outcome of one check: its name, whether the model passed, and what differed by how much."""
    name: str
    passed: bool
    detail: str

    def __str__(self):
        return f"{'passed' if self.passed else 'FAILED'} {self.name}: {self.detail}"


def check_causal(model, src, tgt):
    """No logit at target position t may depend on the target tokens after t.

    src: (B, S), tgt: (B, T) token ids, T >= 2. For every t < T - 1 the tokens after t are
    replaced by other (non-padding) tokens, and the logits at positions 0..t must not move by
    more than TOLERANCE times the largest absolute logit. Runs in eval mode, then in train mode with
    dropout held fixed (see ``HeldDropout``), so that a leak that exists only in training is caught.
    """
    pad_id = _check_inputs(model, src, tgt, "check_causal", min_length=2)
    worst = (0.0, None, None)
    for mode in ("eval", "train"):
        with _mode(model, mode), torch.no_grad():
            forward = _forward(model, mode)
            logits = forward(src, tgt)
            scale = _scale(logits)
            for t in range(tgt.size(1) - 1):
                changed = tgt.clone()
                changed[:, t + 1:] = _other_tokens(tgt[:, t + 1:], pad_id, logits.size(-1), seed=t)
                change = _change(forward(src, changed)[:, :t + 1], logits[:, :t + 1], scale)
                if change > worst[0]:
                    worst = (change, t, mode)
    change, at, mode = worst
    if change <= TOLERANCE:
        return CheckResult("causal", True, f"in eval and train mode, no logit moved by more than {TOLERANCE:g} "
                                           f"of the largest when later tokens changed")
    return CheckResult("causal", False, f"in {mode} mode, the logits at position {at} moved by {_size(change)} "
                                        f"when only the tokens after it changed")


class HeldDropout:
    """Inside ``with HeldDropout(seed):`` dropout keeps or drops each element by its index alone.

    Two forwards that should agree on the positions they share, one of them on a longer sequence,
    must draw the same dropout masks on those positions. Resetting the random generator before
    each forward is not enough: torch draws a mask in the memory order of the whole tensor, so
    when a (B, T, D) tensor grows to (B, T + 2, D) every element after the first row gets another
    number. Here each mask is a hash of the element's index (b, t, d, ...), of the seed and of how
    many dropouts ran before it in this forward: element (b, t, d) of the i-th dropout gets the
    same verdict in both forwards, whatever the length. The rate stays p, each kept element is
    scaled by 1 / (1 - p), as torch does.

    Covered: ``torch.nn.functional.dropout`` (so ``nn.Dropout``) and the dropout inside
    ``torch.nn.functional.scaled_dot_product_attention`` (so ``nn.MultiheadAttention`` and
    ``nn.Transformer``), replaced for the duration of the block. The global random generator is
    also set to the same seed before each forward and restored afterwards, so other randomness is
    at least drawn alike by two forwards of the same shapes.
    """

    def __init__(self, seed=0, generator_seed=None, drop=True):
        self.seed, self.calls, self.drop = seed, 0, drop  # drop=False: every dropout keeps everything
        self.generator_seed = seed if generator_seed is None else generator_seed

    def __enter__(self):
        self.originals = F.dropout, F.scaled_dot_product_attention
        cuda = range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []
        self.rng = torch.random.fork_rng(devices=cuda)
        self.rng.__enter__()
        torch.manual_seed(self.generator_seed)
        F.dropout, F.scaled_dot_product_attention = self.dropout, self.attention
        return self

    def __exit__(self, *exc):
        F.dropout, F.scaled_dot_product_attention = self.originals
        return self.rng.__exit__(*exc)

    def dropout(self, input, p=0.5, training=True, inplace=False):
        if not training or p == 0 or not self.drop:
            return input
        self.calls += 1
        keep = _keep(input.shape, p, _hash_int(self.seed * 1_000_003 + self.calls), input.device)
        scaled = keep.to(input.dtype) / (1 - p) if p < 1 else torch.zeros_like(input)
        return input.mul_(scaled) if inplace else input * scaled

    def attention(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        """scaled_dot_product_attention written out, so that its dropout can be held fixed."""
        if dropout_p == 0 or not self.drop:
            return self.originals[1](query, key, value, attn_mask=attn_mask, dropout_p=0.0, is_causal=is_causal,
                                     scale=scale, **kwargs)
        if kwargs.get("enable_gqa"):
            repeat = query.size(-3) // key.size(-3)
            key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
        scores = query @ key.transpose(-2, -1) * (1 / math.sqrt(query.size(-1)) if scale is None else scale)
        if is_causal:
            allowed = torch.ones(query.size(-2), key.size(-2), dtype=torch.bool, device=query.device).tril()
            scores = scores.masked_fill(~allowed, float("-inf"))
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else scores + attn_mask
        return self.dropout(torch.softmax(scores, dim=-1), dropout_p) @ value


def check_padding(model, src, tgt, extra=2):
    """Padding appended to the source, or to the target, changes no logit of a real position.

    src: (B, S), tgt: (B, T). ``extra`` padding ids are appended to every row of one of them;
    the logits at the T original target positions must not move by more than TOLERANCE times
    the largest absolute logit. Runs in eval mode, then in train mode with dropout held fixed by
    ``HeldDropout``, whose masks depend on each element's index only, so that the longer rows
    draw the same masks on the positions both forwards share. If the model draws other random
    numbers (the same input gives other logits under another seed), train mode is not judged,
    and the detail says so. When the padding moves real tokens to other indices (a decoder-only
    model that reads the source and the target as one row), the masks cannot line up; a side
    that moves in train mode is then judged again in train mode with every dropout keeping
    everything, so a leak that exists only in training is still caught.
    """
    pad_id = _check_inputs(model, src, tgt, "check_padding")
    _check_count("check_padding", "extra", extra)
    changes, skipped = {}, ""
    for mode in ("eval", "train"):
        with _mode(model, mode), torch.no_grad():
            forward = _forward(model, mode)
            logits = forward(src, tgt)
            scale = _scale(logits)
            if mode == "train" and _change(_forward(model, mode, generator_seed=1)(src, tgt), logits, scale) > TOLERANCE:
                skipped = (" (train mode not judged: the same input gives other logits under another seed, so the "
                           "model draws random numbers other than dropout's)")
                continue
            try:
                for side, padded in _padded_forwards(forward, src, tgt, pad_id, extra).items():
                    changes[mode, side] = _change(padded, logits, scale)
                if mode == "train" and max(changes["train", s] for s in ("source", "target")) > TOLERANCE:
                    kept = _forward(model, mode, drop=False)  # masks that could not line up: judge without them
                    kept_logits = kept(src, tgt)
                    for side, padded in _padded_forwards(kept, src, tgt, pad_id, extra).items():
                        if changes["train", side] > TOLERANCE:
                            changes["train", side] = _change(padded, kept_logits, _scale(kept_logits))
            except ValueError as error:  # for instance a max_len that the longer rows exceed
                raise ValueError(f"check_padding appends {extra} padding tokens to src {_shape(src)} and to tgt "
                                 f"{_shape(tgt)}, and the model refuses the longer rows: {error}") from error
    moved = {}
    for (mode, side), change in changes.items():  # eval first: a side that fails there is reported there
        if change > TOLERANCE and side not in {s for _, s in moved}:
            moved[mode, side] = change
    if not moved:
        modes = "eval and train mode" if not skipped else "eval mode"
        return CheckResult("padding", True, f"in {modes}, no logit moved by more than {TOLERANCE:g} of the largest "
                                            f"with {extra} padding tokens more on either side{skipped}")
    return CheckResult("padding", False, "; ".join(f"in {mode} mode, {extra} padding tokens more on the {side} moved "
                                                   f"the logits by {_size(change)}"
                                                   for (mode, side), change in moved.items()) + skipped)


def _padded_forwards(forward, src, tgt, pad_id, extra):
    """The logits at tgt's positions with ``extra`` padding ids appended to the source, and to the target."""
    return {"source": forward(_pad(src, pad_id, extra), tgt),
            "target": forward(src, _pad(tgt, pad_id, extra))[:, :tgt.size(1)]}


def check_batch_independence(model, src, tgt):
    """Each example's logits are the same in the batch as alone: examples must not see each other.

    src: (B, S), tgt: (B, T), B >= 2. Runs the batch, then every example as a batch of one, in
    eval mode; each example's logits must agree within TOLERANCE times the batch's largest absolute logit.
    """
    _check_inputs(model, src, tgt, "check_batch_independence", min_batch=2)
    with evaluating(model), torch.no_grad():
        logits = model(src, tgt)
        scale = _scale(logits)
        changes = [_change(model(src[i:i + 1], tgt[i:i + 1])[0], logits[i], scale)
                   for i in range(src.size(0))]
    worst = max(changes)
    if worst <= TOLERANCE:
        return CheckResult("batch independence", True, f"every example's logits alone are those in the batch, "
                                                       f"within {TOLERANCE:g} of the largest")
    return CheckResult("batch independence", False, f"example {changes.index(worst)} alone gets logits that "
                                                    f"differ by {_size(worst)} from its logits in the batch")


def check_gradients(model, src, tgt):
    """Every parameter that should get a gradient gets a finite one that is not all zeros.

    src: (B, S), tgt: (B, T), some row of each with two or more non-padding tokens. The loss is a
    fixed random weighting of every logit, so every parameter that shapes the output has to
    receive some gradient. One kind of parameter gets exactly zero by construction: the bias of
    a key projection (a submodule's ``k_proj``), since it adds the same number q . b to every
    score of a query, which softmax ignores; its computed gradient is rounding noise. Such a bias
    is named as structurally zero, and not counted, once a random change of it is seen to move no
    logit; a bias that does move the logits is judged like any other parameter.
    """
    _check_inputs(model, src, tgt, "check_gradients", min_real=2)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        return CheckResult("gradients", False, "the model has no trainable parameters")
    with evaluating(model), torch.enable_grad():
        logits = model(src, tgt)
        weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0)).to(logits)
        grads = torch.autograd.grad((logits * weights).sum(), [p for _, p in named], allow_unused=True)
    has_grad = [(name, p) for (name, p), grad in zip(named, grads) if grad is not None]
    zero_by_construction = _key_biases_ignored(model, src, tgt, logits.detach(), has_grad)
    problems = {"no gradient": [], "a gradient that is not finite": [], "a gradient of zeros": []}
    for (name, _), grad in zip(named, grads):
        if grad is None:
            problems["no gradient"].append(name)
        elif not torch.isfinite(grad).all():
            problems["a gradient that is not finite"].append(name)
        elif not grad.any() and name not in zero_by_construction:
            problems["a gradient of zeros"].append(name)
    found = {kind: names for kind, names in problems.items() if names}
    structural = (f"; {len(zero_by_construction)} key-projection biases get zero by construction (softmax ignores "
                  f"a constant added to every score of a query), not counted: {_examples(zero_by_construction)}"
                  if zero_by_construction else "")
    if not found:
        counted = len(named) - len(zero_by_construction)
        return CheckResult("gradients", True, f"all {counted} other parameters get a finite, non-zero gradient"
                                              f"{structural}" if structural else
                                              f"all {counted} parameters get a finite, non-zero gradient")
    return CheckResult("gradients", False, "; ".join(f"{len(names)} of {len(named)} parameters get {kind}, "
                                                     f"e.g. {names[0]}" for kind, names in found.items()) + structural)


def check_masked_rows(model, src, tgt):
    """A query with nothing to attend to gives finite logits, never NaN.

    src: (B, S), tgt: (B, T). The first example's source and target are replaced by padding
    only, so every one of its attention rows is fully masked; all logits must stay finite.
    This is a convention of this book, not a matter of correctness: chapter 2's softmax gives a
    row with no allowed key zero weights. torch.nn.Transformer gives NaN there, and is right on
    every input that holds a real token; a model that follows torch fails this check alone.
    """
    pad_id = _check_inputs(model, src, tgt, "check_masked_rows")
    src, tgt = src.clone(), tgt.clone()
    src[0], tgt[0] = pad_id, pad_id
    with evaluating(model), torch.no_grad():
        logits = model(src, tgt)
    bad = (~torch.isfinite(logits)).sum().item()
    if not bad:
        return CheckResult("masked rows", True, "an example made of padding only gets finite logits")
    return CheckResult("masked rows", False, f"an example made of padding only gets {bad} logits that are NaN "
                                             f"or infinite (of {logits.numel()}); finite logits there are a "
                                             f"convention of this book, not a matter of correctness: "
                                             f"torch.nn.Transformer gives NaN too")


def check_components(model):
    """Each MultiHeadAttention and LayerNorm inside ``model`` against its torch.nn counterpart.

    Attention layers whose head widths torch.nn.MultiheadAttention cannot express are skipped.
    An output that holds NaN or infinity fails, whatever the reference gives.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"check_components needs a torch.nn.Module, got {type(model).__name__}")
    worst, compared, skipped = (0.0, None), 0, 0
    with evaluating(model):
        for name, module in model.named_modules():
            if isinstance(module, MultiHeadAttention) and not _torch_can_express(module):
                skipped += 1
                continue
            if isinstance(module, (MultiHeadAttention, LayerNorm)):
                compare = _multi_head_error if isinstance(module, MultiHeadAttention) else _layer_norm_error
                error = compare(module)
                compared += 1
                if error > worst[0]:
                    worst = (error, name or type(module).__name__)
    note = f" ({skipped} attention layers with other head widths skipped)" if skipped else ""
    if not compared:
        return CheckResult("torch reference", True, f"no MultiHeadAttention or LayerNorm to compare{note}")
    if worst[0] <= TOLERANCE:
        return CheckResult("torch reference", True, f"{compared} attention layers and layer norms match "
                                                    f"torch.nn within {TOLERANCE:g} of its largest output{note}")
    if math.isinf(worst[0]):
        return CheckResult("torch reference", False, f"the output of {worst[1]}, or of torch.nn with its weights, "
                                                     f"holds NaN or infinity{note}")
    return CheckResult("torch reference", False, f"{worst[1]} differs from torch.nn by {worst[0]:.2g} times its "
                                                 f"largest output{note}")


def check_attention(attention, seed=0):
    """A function attention(query, key, value, mask) -> output or (output, weights) against
    torch.nn.functional.scaled_dot_product_attention, on random inputs and a random mask
    (True = may attend) that leaves every query at least one key, so that torch's output is finite."""
    if not callable(attention):
        raise ValueError(f"check_attention needs a function attention(query, key, value, mask), "
                         f"got {type(attention).__name__}")
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, t, d, generator=g) for t, d in ((4, 8), (6, 8), (6, 5)))
    mask = torch.rand(2, 1, 4, 6, generator=g) < 0.6
    mask[..., 0] = True
    out = _attention_output(attention(q, k, v, mask), (2, 3, 4, 5), weights_shape=(2, 3, 4, 6))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    error = _change(out, expected, _scale(expected))
    if error <= TOLERANCE:
        return CheckResult("attention reference", True,
                           f"matches torch's scaled_dot_product_attention within {TOLERANCE:g} of the largest output")
    if math.isinf(error):
        return CheckResult("attention reference", False, "the output holds NaN or infinity, where torch's "
                                                         "scaled_dot_product_attention gives finite numbers")
    return CheckResult("attention reference", False,
                       f"differs from torch's scaled_dot_product_attention by {error:.2g} times its largest output")


def check_overfit(model, src, tgt, steps=100, lr=1e-2):
    """A copy of the model must learn this batch by heart, and learn from the source what only the source tells.

    src: (B, S), tgt: (B, T) with T >= 2. Two copies train for ``steps`` Adam steps each, dropout
    off; the model itself is not touched, and the loss and the optimizer are the check's own.

    1. The batch: the copy reads tgt[:, :-1] and must predict tgt[:, 1:] (padding excluded); the
       loss must fall below a quarter of where it started. This shows that the trainable weights
       can fit one batch at all. It cannot show that the source is used: a decoder that never
       sees the source can still learn the batch from the target prefixes it reads.
    2. The source: every example gets the same one-token target prefix (tgt[0, 0]) and, to predict,
       a label that only its source tells apart (one per distinct source row). A model blind to
       the source predicts the same thing for every example, and its loss cannot fall below ln n
       for n distinct labels; the copy must fall below a quarter of that. With one distinct
       source (or a vocabulary of one token besides padding), this part is skipped and the detail says so.
    """
    pad_id = _check_inputs(model, src, tgt, "check_overfit", min_length=2)
    _check_count("check_overfit", "steps", steps)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    if not (tgt_out != pad_id).any():
        raise ValueError(f"check_overfit needs target tokens other than padding (pad_id={pad_id}) after the first")
    if not any(p.requires_grad for p in model.parameters()):
        return CheckResult("overfit one batch", False, "the model has no trainable parameters")
    fit = _fit_copy(model, src, tgt_in, tgt_out, pad_id, steps, lr)
    if isinstance(fit, str):
        return CheckResult("overfit one batch", False, fit)
    first, last, accuracy, step, _ = fit
    passed = math.isfinite(last) and last < first / 4
    detail = f"after {step} steps the loss went from {first:.3g} to {last:.3g}, {100 * accuracy:.0f}% of the tokens right"
    labels = torch.unique(src, dim=0, return_inverse=True)[1]  # one label per distinct source row
    ids = torch.tensor([i for i in range(fit[4]) if i != pad_id], device=tgt.device)
    if labels.max() == 0 or ids.numel() < 2:
        return CheckResult("overfit one batch", passed, f"{detail}; one distinct source, or one non-padding token: "
                                                        f"whether the source matters is not tested")
    label_ids = ids[labels % ids.numel()].unsqueeze(1)  # (B, 1)
    share = torch.unique(label_ids, return_counts=True)[1].double() / src.size(0)
    blind = -(share * share.log()).sum().item()  # the best loss of one prediction for every example
    prefix = tgt[tgt != pad_id][:1].expand(src.size(0), 1)  # the same one-token prefix for all
    source = _fit_copy(model, src, prefix, label_ids, pad_id, steps, lr)
    if isinstance(source, str):
        return CheckResult("overfit one batch", False, f"{detail}; on labels that only the source tells: {source}")
    uses_source = math.isfinite(source[1]) and source[1] < blind / 4
    return CheckResult("overfit one batch", passed and uses_source,
                       f"{detail}; on labels that only the source tells apart, from {source[0]:.3g} to "
                       f"{source[1]:.3g}, where a model blind to the source stays at {blind:.3g} or more")


def run_checks(model, src, tgt):
    """The model checks in order of cost: a list of CheckResult (check_overfit, which trains, is not among them)."""
    _check_inputs(model, src, tgt, "run_checks", min_length=2, min_batch=2, min_real=2)
    return [check(model, src, tgt) for check in (check_causal, check_padding, check_batch_independence,
                                                  check_masked_rows, check_gradients)] + [check_components(model)]


def _mode(model, mode):
    """A context: the model in eval mode, or in train mode with its buffers (batch norm's statistics, say)
    restored afterwards; either way every submodule is back in its mode at the end."""
    return evaluating(model) if mode == "eval" else _training(model)


@contextlib.contextmanager
def _training(model):
    modes = [(module, module.training) for module in model.modules()]
    buffers = [(buffer, buffer.clone()) for buffer in model.buffers()]
    model.train()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def _forward(model, mode, generator_seed=None, drop=True):
    """model itself in eval mode; in train mode, model under a fresh HeldDropout for every call."""
    if mode == "eval":
        return model

    def forward(src, tgt):
        with HeldDropout(seed=0, generator_seed=generator_seed, drop=drop):
            return model(src, tgt)
    return forward


def _scale(x):
    """The largest |value| among the finite entries of x: the yardstick of differences (0.0 if none)."""
    finite = x[torch.isfinite(x)]
    return finite.abs().max().item() if finite.numel() else 0.0


def _change(a, b, scale):
    """The largest |a - b| divided by ``scale``; infinite if either holds a NaN or an infinity, which
    no tolerance may excuse, or if they differ where the yardstick is 0."""
    difference = (a - b).abs()
    if not torch.isfinite(difference).all():
        return math.inf
    largest = difference.max().item() if difference.numel() else 0.0
    return 0.0 if largest == 0 else largest / scale if scale > 0 else math.inf


def _size(change):
    return "NaN or infinity" if math.isinf(change) else f"{change:.2g} times the largest |logit|"


def _hash_int(x):
    """A 32-bit mix of a Python integer (the same steps as ``_hash`` on tensors)."""
    return int(_hash(torch.tensor(x % 2 ** 32)))


def _hash(x):
    """An integer hash of each entry of an int64 tensor with values in [0, 2**32): a well-mixed 32-bit number."""
    for _ in range(2):
        x = ((x >> 16) ^ x) * 0x45D9F3B & 0xFFFFFFFF
    return (x >> 16) ^ x


def _keep(shape, p, salt, device):
    """A boolean mask of ``shape``, True with probability 1 - p, whose entry at an index depends only on
    that index and ``salt``: a longer tensor gets the same entries on the indices it shares."""
    h = torch.tensor(salt, dtype=torch.int64, device=device)
    for dim, size in enumerate(shape):
        index = torch.arange(size, device=device).view([-1 if d == dim else 1 for d in range(len(shape))])
        h = _hash(h ^ index)
    return (h >> 8).to(torch.float64) / 2 ** 24 >= p


def _key_biases_ignored(model, src, tgt, logits, named):
    """Names of the biases of submodules' ``k_proj`` that no logit depends on: a random change of each,
    in eval mode, moves no logit by more than TOLERANCE of the largest. Their exact gradient is zero."""
    trainable = {id(p): name for name, p in named}
    found, scale = [], _scale(logits)
    g = torch.Generator().manual_seed(0)
    with evaluating(model), torch.no_grad():
        for module in model.modules():
            bias = getattr(getattr(module, "k_proj", None), "bias", None)
            if not isinstance(bias, nn.Parameter) or id(bias) not in trainable:
                continue
            saved = bias.clone()
            try:
                bias.add_(torch.randn(bias.shape, generator=g).to(bias))
                if _change(model(src, tgt), logits, scale) <= TOLERANCE:
                    found.append(trainable[id(bias)])
            finally:
                bias.copy_(saved)
    return found


def _examples(names, shown=2):
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _fit_copy(model, src, tgt_in, tgt_out, pad_id, steps, lr):
    """Train a copy of the model on (src, tgt_in) -> tgt_out with Adam, dropout off. Returns (first loss,
    last loss, token accuracy, steps taken, vocabulary size), or a sentence saying why it cannot train."""
    student = copy.deepcopy(model).eval()  # eval: dropout would keep it from fitting exactly
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    with torch.enable_grad():
        for step in range(steps + 1):
            logits = student(src, tgt_in)
            loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=pad_id)
            if step == 0:
                first = loss.item()
            if step == steps or not torch.isfinite(loss):
                break
            if not loss.requires_grad:
                return "the loss does not depend on any trainable parameter"
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    real = tgt_out != pad_id
    accuracy = (logits.argmax(-1) == tgt_out)[real].float().mean().item()
    return first, loss.item(), accuracy, step, logits.size(-1)


def _other_tokens(tokens, pad_id, vocab_size, seed):
    """Random ids of tokens' shape, never pad_id (fixed by ``seed``)."""
    ids = torch.randint(0, vocab_size - 1, tokens.shape, generator=torch.Generator().manual_seed(seed))
    return (ids + (ids >= pad_id).long()).to(tokens.device)


def _check_count(check, name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{check}: {name} must be an integer >= 1, got {value!r}")


def _attention_output(result, shape, weights_shape):
    """The output tensor of what an attention function returned: the output, or (output, weights)."""
    out = result[0] if isinstance(result, tuple) and result else result
    if torch.is_tensor(out) and tuple(out.shape) == shape:
        return out
    got = f"a tuple whose first element is {_shape(out)}" if isinstance(result, tuple) and result else _shape(out)
    hint = ", the shape of the weights: return (output, weights)" if _shape(out) == weights_shape else ""
    raise ValueError(f"check_attention: attention(query, key, value, mask) must return the output, of shape "
                     f"{shape}, or a tuple (output, weights); got {got}{hint}")


def _pad(tokens, pad_id, extra):
    return torch.cat([tokens, tokens.new_full((tokens.size(0), extra), pad_id)], dim=1)


def _shape(x):
    return tuple(x.shape) if torch.is_tensor(x) else type(x).__name__


def _check_inputs(model, src, tgt, check, min_length=1, min_batch=1, min_real=1):
    """Raise ValueError naming what is missing or wrong; return model.config.pad_id."""
    pad_id = getattr(getattr(model, "config", None), "pad_id", None)
    if not isinstance(pad_id, int) or isinstance(pad_id, bool):
        raise ValueError(f"{check} needs model.config.pad_id, the padding id, as an integer; "
                         f"{type(model).__name__} has {'no config' if not hasattr(model, 'config') else 'no config.pad_id'}"
                         if pad_id is None else f"{check}: model.config.pad_id must be an integer, got {pad_id!r}")
    if not callable(getattr(model, "forward", None)):
        raise ValueError(f"{check} needs a model with forward(src, tgt); {type(model).__name__} has none")
    for name, x in (("src", src), ("tgt", tgt)):
        if not torch.is_tensor(x) or x.dim() != 2 or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{check}: {name} must be a 2-D (batch, length) tensor of integer token ids, "
                             f"got {_shape(x)}{'' if not torch.is_tensor(x) else f' of dtype {x.dtype}'}")
    if src.size(0) != tgt.size(0):
        raise ValueError(f"{check}: src {_shape(src)} and tgt {_shape(tgt)} must have the same batch size")
    if src.size(0) < min_batch or tgt.size(1) < min_length or src.size(1) < 1:
        raise ValueError(f"{check} needs a batch of at least {min_batch} and targets of at least {min_length} "
                         f"tokens, got src {_shape(src)} and tgt {_shape(tgt)}")
    most = {name: int((x != pad_id).sum(dim=1).max()) for name, x in (("src", src), ("tgt", tgt))}
    if min(most.values()) < min_real:
        # One key gets weight 1 whatever the query and key: a correct model's q/k projections get no gradient.
        raise ValueError(f"{check} needs {min_real} or more non-padding tokens in some row of src and in some row "
                         f"of tgt, got at most {most['src']} in src and {most['tgt']} in tgt: attention over a single "
                         f"key does not depend on the queries and keys, so their projections get no gradient")
    return pad_id


def _torch_can_express(attention):
    head = attention.d_model // attention.num_heads
    return attention.d_model % attention.num_heads == 0 and attention.d_k == attention.d_v == head


def _multi_head_error(attention, seed=0):
    """Largest difference between ``attention`` and torch.nn.MultiheadAttention with its weights (relative to torch's largest output),
    for self-attention under a causal mask and cross-attention under a padding mask; inf if either
    holds NaN or infinity. Both run in float64 copies, so that a model in another precision is
    compared on its arithmetic alone."""
    g = torch.Generator().manual_seed(seed)
    attention = copy.deepcopy(attention).double()
    d, bias, device = attention.d_model, attention.q_proj.bias is not None, attention.q_proj.weight.device
    reference = nn.MultiheadAttention(d, attention.num_heads, bias=bias, batch_first=True).to(device).double()
    parts = (attention.q_proj, attention.k_proj, attention.v_proj)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([p.weight for p in parts]))
        reference.out_proj.weight.copy_(attention.out_proj.weight)
        if bias:
            reference.in_proj_bias.copy_(torch.cat([p.bias for p in parts]))
            reference.out_proj.bias.copy_(attention.out_proj.bias)
        x, memory = (torch.randn(2, t, d, generator=g).to(device).double() for t in (5, 7))
        future = torch.ones(5, 5, dtype=torch.bool, device=device).triu(1)  # torch: True = may NOT attend
        padding = torch.zeros(2, 7, dtype=torch.bool, device=device)
        padding[0, 4:] = True
        pairs = [(attention(x, x, x, ~future.expand(2, 5, 5)), reference(x, x, x, attn_mask=future)[0]),
                 (attention(x, memory, memory, ~padding[:, None, :]),
                  reference(x, memory, memory, key_padding_mask=padding)[0])]
    return max(_change(ours, theirs, _scale(theirs)) for ours, theirs in pairs)


def _layer_norm_error(norm, seed=0):
    """Largest difference between ``norm`` and torch.nn.functional.layer_norm with its weight and bias (relative),
    both in float64; inf if either holds NaN or infinity."""
    g = torch.Generator().manual_seed(seed)
    norm = copy.deepcopy(norm).double()
    x = (3 * torch.randn(2, 5, norm.d_model, generator=g) + 1).to(norm.weight.device).double()
    with torch.no_grad():
        expected = F.layer_norm(x, (norm.d_model,), norm.weight, norm.bias, norm.eps)
        return _change(norm(x), expected, _scale(expected))
