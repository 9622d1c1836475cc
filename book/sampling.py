# Generated from chapters/14_writing_text.ipynb by tools/export.py: edit the notebook, not this file.
"""Sampling text from a GPT: temperature, top-k and top-p, with the key/value cache (chapter 14).

``sample(model, ids, max_new_tokens, ...)`` feeds the prompt once and then one token per step;
``next_token_probabilities`` is the distribution each step draws from.
"""
import torch

from book.gpt import GPT, feed, start_gpt_cache
from book.train import evaluating


def next_token_probabilities(logits, temperature=1.0, top_k=None, top_p=None):
    """logits (B, V) -> probabilities (B, V): softmax(logits / temperature), cut to the top_k most
    likely tokens, then to the smallest set whose probability reaches top_p, renormalised."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_k is not None and top_k < probs.size(-1):
        top = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, probs.topk(top_k, dim=-1).indices, True)
        probs = torch.where(top, probs, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    if top_p is not None and top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # the mass of the tokens ranked above each one
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, before < top_p)
        probs = torch.where(keep, probs, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


@torch.no_grad()
def sample(model, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, cache=True):
    """Continue ids (B, T) by max_new_tokens drawn tokens -> (B, T + max_new_tokens).

    temperature 0 (or top_k=1) takes the most likely token; otherwise each token is drawn from
    next_token_probabilities with ``generator``. cache=False recomputes the whole prefix each step.
    """
    _check_sample(model, ids, max_new_tokens, temperature, top_k, top_p)
    with evaluating(model):
        if cache:
            memo = start_gpt_cache(model, ids.size(0), ids.device)
            logits = feed(model, ids, memo)[:, -1]
        for step in range(max_new_tokens):
            if not cache:
                logits = model(ids)[:, -1]
            if temperature == 0 or top_k == 1:
                next_id = logits.argmax(-1)
            else:
                probs = next_token_probabilities(logits, temperature, top_k, top_p)
                next_id = torch.multinomial(probs, 1, generator=generator)[:, 0]
            ids = torch.cat([ids, next_id[:, None]], dim=1)
            if cache and step < max_new_tokens - 1:
                logits = feed(model, next_id[:, None], memo)[:, -1]
    return ids


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_sample(model, ids, max_new_tokens, temperature, top_k, top_p):
    if not isinstance(model, GPT):
        raise ValueError(f"sample needs a book.gpt.GPT, got {type(model).__name__}")
    if not torch.is_tensor(ids) or ids.dim() != 2 or ids.size(1) < 1:
        got = f"shape {tuple(ids.shape)}" if torch.is_tensor(ids) else type(ids).__name__
        raise ValueError(f"ids must be a (batch, length >= 1) tensor of token ids, got {got}")
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if ids.size(1) + max_new_tokens > model.config.max_len:
        raise ValueError(f"a prompt of {ids.size(1)} tokens plus max_new_tokens={max_new_tokens} is more than "
                         f"the model's max_len={model.config.max_len}")
    if not _is_number(temperature) or not temperature >= 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
