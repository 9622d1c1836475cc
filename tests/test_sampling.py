"""book.sampling (chapter 14): greedy limits, the distribution of the draws, top-k/top-p sets, the cache, bad input."""
import math

import pytest
import torch

from book.gpt import GPT, GPTConfig
from book.sampling import next_token_probabilities, sample


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=12, d_model=16, num_heads=2, num_layers=2, d_ff=32, dropout=0.1, max_len=40))
    with torch.no_grad():  # sharper logits than Xavier gives, so that greedy and sampling differ
        model.tok_embed.weight.mul_(3)
    return model


PROMPT = torch.tensor([[1, 2, 3], [4, 4, 5]])


def greedy(model, ids, n):
    model.eval()
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("kwargs", [dict(temperature=0), dict(top_k=1), dict(temperature=0, top_p=0.5),
                                    dict(temperature=2.0, top_k=1)])
def test_greedy_limits(gpt, kwargs):
    out = sample(gpt, PROMPT, 10, generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(out, greedy(gpt, PROMPT, 10))


def test_cached_and_uncached_draw_the_same(gpt):
    for kwargs in (dict(), dict(temperature=0.7, top_k=5), dict(top_p=0.8)):
        a = sample(gpt, PROMPT, 20, generator=torch.Generator().manual_seed(3), **kwargs)
        b = sample(gpt, PROMPT, 20, generator=torch.Generator().manual_seed(3), cache=False, **kwargs)
        assert torch.equal(a, b) and a.shape == (2, 23)
        assert torch.equal(a[:, :3], PROMPT)


def test_mode_restored(gpt):
    gpt.train()
    sample(gpt, PROMPT, 2)
    assert gpt.training


def test_same_generator_same_samples_different_seed_differs(gpt):
    a = sample(gpt, PROMPT.repeat(20, 1), 10, generator=torch.Generator().manual_seed(5))
    b = sample(gpt, PROMPT.repeat(20, 1), 10, generator=torch.Generator().manual_seed(5))
    c = sample(gpt, PROMPT.repeat(20, 1), 10, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kwargs", [dict(temperature=1.0), dict(temperature=0.5), dict(temperature=1.5, top_k=4),
                                    dict(top_p=0.7), dict(temperature=1.3, top_k=6, top_p=0.9)])
def test_histogram_follows_the_distribution(gpt, kwargs):
    """40,000 one-token draws from one prompt against the distribution computed by hand from the logits.

    Tolerance: the largest gap in any token's frequency below 5 standard errors sqrt(p(1-p)/n) + 1e-3,
    and no draw outside the allowed set (a token given probability 0 is never drawn)."""
    n = 40_000
    gpt.eval()
    with torch.no_grad():
        logits = gpt(PROMPT[:1])[0, -1].double()
    probs = torch.softmax(logits / kwargs.get("temperature", 1.0), -1)
    order = probs.argsort(descending=True)
    allowed = torch.zeros(12, dtype=torch.bool)
    k = kwargs.get("top_k") or 12
    p_sorted = probs[order][:k] / probs[order][:k].sum()
    top_p = kwargs.get("top_p", 1.0)
    mass = 0.0
    for rank in range(k):  # smallest set whose probability reaches top_p
        allowed[order[rank]] = True
        mass += p_sorted[rank].item()
        if mass >= top_p:
            break
    expected = torch.where(allowed, probs, 0.0)
    expected /= expected.sum()
    out = sample(gpt, PROMPT[:1].repeat(n, 1), 1, generator=torch.Generator().manual_seed(0), **kwargs)
    freq = torch.bincount(out[:, -1], minlength=12).double() / n
    assert (freq[~allowed] == 0).all()
    se = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() <= 5 * se + 1e-3).all(), (freq, expected)
    assert 0.5 * (freq - expected).abs().sum() < 0.02


def test_top_k_and_top_p_sets_by_hand():
    logits = torch.log(torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15]]))
    k2 = next_token_probabilities(logits, top_k=2)
    assert torch.allclose(k2, torch.tensor([[0, 0.4 / 0.7, 0, 0.3 / 0.7, 0]]))
    p = next_token_probabilities(logits, top_p=0.7)  # 0.4 + 0.3 reaches 0.7: two tokens
    assert torch.allclose(p, torch.tensor([[0, 0.4 / 0.7, 0, 0.3 / 0.7, 0]]))
    p = next_token_probabilities(logits, top_p=0.71)  # needs the third, 0.15
    assert torch.allclose(p, torch.tensor([[0, 0.4, 0, 0.3, 0.15]]) / 0.85)
    kp = next_token_probabilities(logits, top_k=3, top_p=0.8)  # top 3 renormalised: 0.47, 0.35, 0.18
    assert torch.allclose(kp, torch.tensor([[0, 0.4, 0, 0.3, 0]]) / 0.7)
    t = next_token_probabilities(logits, temperature=0.5)
    assert torch.allclose(t, torch.softmax(2 * logits, -1))
    assert torch.allclose(next_token_probabilities(logits, top_p=1.0), torch.softmax(logits, -1))


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(temperature=float("nan")), dict(top_k=0),
                                    dict(top_k=2.0), dict(top_p=0.0), dict(top_p=1.01), dict(top_p=-1),
                                    dict(max_new_tokens=-1), dict(max_new_tokens=38)])
def test_bad_values(gpt, kwargs):
    args = {"max_new_tokens": 5, **kwargs}
    with pytest.raises(ValueError):
        sample(gpt, PROMPT, **args)


def test_bad_model_and_ids(gpt):
    with pytest.raises(ValueError):
        sample(torch.nn.Linear(2, 2), PROMPT, 3)
    with pytest.raises(ValueError):
        sample(gpt, PROMPT[0], 3)
    assert torch.equal(sample(gpt, PROMPT, 0), PROMPT)
