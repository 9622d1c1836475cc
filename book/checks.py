# Generated from chapters/10_debugging.ipynb by tools/export.py: edit the notebook, not this file.
"""Checks that catch the bugs easy tests miss (chapter 10).

Every model check takes a model with ``forward(src (B, S), tgt (B, T)) -> logits (B, T, V)``
and a ``config.pad_id``, runs it in eval mode, puts every submodule back in the mode it
found it in, and returns a ``CheckResult``. ``run_checks`` runs the model checks in order
of cost; ``check_overfit`` trains a copy and is left to the caller.
"""
import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from book.multi_head import MultiHeadAttention
from book.residual import LayerNorm
from book.train import evaluating

TOLERANCE = 1e-4  # float32 rounding stays far below it; every bug of chapter 10 far above


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
    replaced by other (non-padding) tokens, and the logits at positions 0..t must not move.
    """
    pad_id = _check_inputs(model, src, tgt, "check_causal", min_length=2)
    with evaluating(model), torch.no_grad():
        logits = model(src, tgt)
        worst, at = 0.0, None
        for t in range(tgt.size(1) - 1):
            changed = tgt.clone()
            changed[:, t + 1:] = _other_tokens(tgt[:, t + 1:], pad_id, logits.size(-1), seed=t)
            change = _change(model(src, changed)[:, :t + 1], logits[:, :t + 1])
            if change > worst:
                worst, at = change, t
    if worst <= TOLERANCE:
        return CheckResult("causal", True, f"no logit moved by more than {TOLERANCE:g} when later tokens changed")
    return CheckResult("causal", False, f"the logits at position {at} moved by {worst:.2g} when only the "
                                        f"tokens after it changed")


def check_padding(model, src, tgt, extra=2):
    """Padding appended to the source, or to the target, changes no logit of a real position.

    src: (B, S), tgt: (B, T). ``extra`` padding ids are appended to every row of one of them;
    the logits at the T original target positions must stay where they were.
    """
    pad_id = _check_inputs(model, src, tgt, "check_padding")
    _check_count("check_padding", "extra", extra)
    with evaluating(model), torch.no_grad():
        logits = model(src, tgt)
        try:
            changes = {"source": _change(model(_pad(src, pad_id, extra), tgt), logits),
                       "target": _change(model(src, _pad(tgt, pad_id, extra))[:, :tgt.size(1)], logits)}
        except ValueError as error:  # for instance a max_len that the longer rows exceed
            raise ValueError(f"check_padding appends {extra} padding tokens to src {_shape(src)} and to tgt "
                             f"{_shape(tgt)}, and the model refuses the longer rows: {error}") from error
    moved = {side: change for side, change in changes.items() if change > TOLERANCE}
    if not moved:
        return CheckResult("padding", True, f"no logit moved by more than {TOLERANCE:g} with {extra} padding "
                                            f"tokens more on either side")
    return CheckResult("padding", False, "; ".join(f"{extra} padding tokens more on the {side} moved the logits "
                                                   f"by {change:.2g}" for side, change in moved.items()))


def check_batch_independence(model, src, tgt):
    """Each example's logits are the same in the batch as alone: examples must not see each other.

    src: (B, S), tgt: (B, T), B >= 2. Runs the batch, then every example as a batch of one.
    """
    _check_inputs(model, src, tgt, "check_batch_independence", min_batch=2)
    with evaluating(model), torch.no_grad():
        logits = model(src, tgt)
        changes = [_change(model(src[i:i + 1], tgt[i:i + 1])[0], logits[i])
                   for i in range(src.size(0))]
    worst = max(changes)
    if worst <= TOLERANCE:
        return CheckResult("batch independence", True, f"every example's logits alone are those in the batch, "
                                                       f"within {TOLERANCE:g}")
    return CheckResult("batch independence", False, f"example {changes.index(worst)} alone gets logits that "
                                                    f"differ by {worst:.2g} from its logits in the batch")


def check_gradients(model, src, tgt):
    """Every parameter gets a finite gradient that is not all zeros, from a loss on the logits.

    src: (B, S), tgt: (B, T), some row of each with two or more non-padding tokens. The loss is a
    fixed random weighting of every logit, so every parameter that shapes the output has to
    receive some gradient.
    """
    _check_inputs(model, src, tgt, "check_gradients", min_real=2)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        return CheckResult("gradients", False, "the model has no trainable parameters")
    with evaluating(model), torch.enable_grad():
        logits = model(src, tgt)
        weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0)).to(logits)
        grads = torch.autograd.grad((logits * weights).sum(), [p for _, p in named], allow_unused=True)
    problems = {"no gradient": [], "a gradient that is not finite": [], "a gradient of zeros": []}
    for (name, _), grad in zip(named, grads):
        if grad is None:
            problems["no gradient"].append(name)
        elif not torch.isfinite(grad).all():
            problems["a gradient that is not finite"].append(name)
        elif not grad.any():
            problems["a gradient of zeros"].append(name)
    found = {kind: names for kind, names in problems.items() if names}
    if not found:
        return CheckResult("gradients", True, f"all {len(named)} parameters get a finite, non-zero gradient")
    return CheckResult("gradients", False, "; ".join(f"{len(names)} of {len(named)} parameters get {kind}, "
                                                     f"e.g. {names[0]}" for kind, names in found.items()))


def check_masked_rows(model, src, tgt):
    """A query with nothing to attend to gives finite logits, never NaN.

    src: (B, S), tgt: (B, T). The first example's source and target are replaced by padding
    only, so every one of its attention rows is fully masked; all logits must stay finite.
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
                                             f"or infinite (of {logits.numel()})")


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
                                                    f"torch.nn within {TOLERANCE:g}{note}")
    if math.isinf(worst[0]):
        return CheckResult("torch reference", False, f"the output of {worst[1]}, or of torch.nn with its weights, "
                                                     f"holds NaN or infinity{note}")
    return CheckResult("torch reference", False, f"{worst[1]} differs from torch.nn by {worst[0]:.2g}{note}")


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
    error = _change(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    if error <= TOLERANCE:
        return CheckResult("attention reference", True,
                           f"matches torch's scaled_dot_product_attention within {TOLERANCE:g}")
    if math.isinf(error):
        return CheckResult("attention reference", False, "the output holds NaN or infinity, where torch's "
                                                         "scaled_dot_product_attention gives finite numbers")
    return CheckResult("attention reference", False,
                       f"differs from torch's scaled_dot_product_attention by {error:.2g}")


def check_overfit(model, src, tgt, steps=100, lr=1e-2):
    """A copy of the model, trained on this one batch, must learn it by heart.

    src: (B, S), tgt: (B, T) with T >= 2: the copy reads tgt[:, :-1] and must predict tgt[:, 1:]
    (padding excluded) for ``steps`` Adam steps, dropout off. Passes if the loss fell below a
    quarter of where it started (the accuracy is reported). The model itself is not touched. The loss
    and the optimizer are the check's own: it tests the model, not the caller's training loop.
    """
    pad_id = _check_inputs(model, src, tgt, "check_overfit", min_length=2)
    _check_count("check_overfit", "steps", steps)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    if not (tgt_out != pad_id).any():
        raise ValueError(f"check_overfit needs target tokens other than padding (pad_id={pad_id}) after the first")
    student = copy.deepcopy(model).eval()  # eval: dropout would keep it from fitting exactly
    trainable = [p for p in student.parameters() if p.requires_grad]
    if not trainable:
        return CheckResult("overfit one batch", False, "the model has no trainable parameters")
    optimizer = torch.optim.Adam(trainable, lr=lr)
    with torch.enable_grad():
        for step in range(steps + 1):
            logits = student(src, tgt_in)
            loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=pad_id)
            if step == 0:
                first = loss.item()
            if step == steps or not torch.isfinite(loss):
                break
            if not loss.requires_grad:
                return CheckResult("overfit one batch", False, "the loss does not depend on any trainable parameter")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    real = tgt_out != pad_id
    accuracy = (logits.argmax(-1) == tgt_out)[real].float().mean().item()
    last = loss.item()
    passed = math.isfinite(last) and last < first / 4
    return CheckResult("overfit one batch", passed, f"after {step} steps the loss went from {first:.3g} to "
                                                    f"{last:.3g}, {100 * accuracy:.0f}% of the tokens right")


def run_checks(model, src, tgt):
    """The model checks in order of cost: a list of CheckResult (check_overfit, which trains, is not among them)."""
    _check_inputs(model, src, tgt, "run_checks", min_length=2, min_batch=2, min_real=2)
    return [check(model, src, tgt) for check in (check_causal, check_padding, check_batch_independence,
                                                  check_masked_rows, check_gradients)] + [check_components(model)]


def _change(a, b):
    """The largest |a - b|; infinite if either holds a NaN or an infinity, which no tolerance may excuse."""
    difference = (a - b).abs()
    return difference.max().item() if torch.isfinite(difference).all() else math.inf


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
    """Largest difference between ``attention`` and torch.nn.MultiheadAttention with its weights,
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
    return max(_change(ours, theirs) for ours, theirs in pairs)


def _layer_norm_error(norm, seed=0):
    """Largest difference between ``norm`` and torch.nn.functional.layer_norm with its weight and bias,
    both in float64; inf if either holds NaN or infinity."""
    g = torch.Generator().manual_seed(seed)
    norm = copy.deepcopy(norm).double()
    x = (3 * torch.randn(2, 5, norm.d_model, generator=g) + 1).to(norm.weight.device).double()
    with torch.no_grad():
        return _change(norm(x), F.layer_norm(x, (norm.d_model,), norm.weight, norm.bias, norm.eps))
