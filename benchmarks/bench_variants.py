"""What if? How much of the speed of our training step does each piece of our own code cost?

This is an analysis, not the book's code: it temporarily swaps one component
of our model for another, inside this process only, and times a training
step with each variant against torch's model, interleaved as in
bench_transformer.py. The variants:

    written_out_layer_norm  chapter 6's LayerNorm.forward -> chapter 6's layer_norm, the equation
                            written out in nine tensor operations (what the module ran before it
                            called F.layer_norm)
    torch_softmax           chapter 2's softmax -> torch.softmax, fully masked rows set to 0
    softmax_grad            chapter 2's softmax with a hand-written backward, y * (g - sum(g * y))

and the speed tricks chapter 2's attention used before it was rewritten in the
plain form. The chapter keeps two of them (the additive mask and _broadcast); each
variant below takes one of those two out, or puts one of the others back:

    masked_fill             the forbidden scores are overwritten with -inf (masked_fill) instead
                            of adding a mask of -inf and 0 (kept trick taken out)
    broadcast_shapes        the shape checks call torch.broadcast_shapes instead of attention's
                            few lines of plain Python, _broadcast (kept trick taken out)
    reciprocal              the softmax multiplies by the reciprocal of the sum instead of
                            dividing (dropped trick put back)
    prescaled_queries       the (.., T_q, d_k) queries are divided by sqrt(d_k) instead of the
                            (.., T_q, T_k) scores (dropped trick put back)
    plain                   masked_fill + broadcast_shapes: no trick at all
    all_four                reciprocal + prescaled_queries, with the two kept: the attention of
                            chapter 2 before it was rewritten

The weights, batch and optimizer are the same for every variant; only the
implementation of these operations changes, and with it the speed.

    python benchmarks/bench_variants.py --threads 1
"""
import argparse
import contextlib
import math
import statistics
import time

import torch

import bench_transformer as bench
import book.attention
import book.multi_head
import book.residual

ORIGINAL = {
    "softmax": book.attention.softmax,
    "broadcast": book.attention._broadcast,
    "layer_norm": book.residual.LayerNorm.forward,
    "attention": book.multi_head.scaled_dot_product_attention,
}


def written_out_layer_norm(self, x):
    return book.residual.layer_norm(x, self.weight, self.bias, self.eps)


def fused_softmax(x, dim=-1):
    return torch.softmax(x, dim).nan_to_num(0.0)  # an all -inf row gives NaN; ours gives 0


class _SoftmaxWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim):
        y = ORIGINAL["softmax"](x.detach(), dim)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return y * (grad - (grad * y).sum(ctx.dim, keepdim=True)), None


def softmax_with_grad(x, dim=-1):
    return _SoftmaxWithGrad.apply(x, dim)


def reciprocal_softmax(x, dim=-1):
    if book.attention._nothing_to_normalise(x, dim):
        return x.clone()
    shift = x.amax(dim=dim, keepdim=True).detach()
    exps = torch.exp(x - shift.clamp(min=torch.finfo(x.dtype).min))
    return exps * exps.sum(dim=dim, keepdim=True).clamp(min=1.0).reciprocal()


def _attention_with(prescaled_queries=False, masked_fill=False):
    """Chapter 2's attention with the queries divided instead of the scores, or masked_fill."""
    def attention(query, key, value, mask=None, dropout=None):
        book.attention._check_attention_inputs(query, key, value, mask)
        if prescaled_queries:
            scores = (query / math.sqrt(query.size(-1))) @ key.transpose(-2, -1)
        else:
            scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))
        if mask is not None:
            if masked_fill:
                scores = scores.masked_fill(~mask, float("-inf"))
            else:
                scores = scores + torch.where(mask, 0.0, float("-inf")).to(scores.dtype)
        weights = book.attention.softmax(scores, dim=-1)
        mixing = weights if dropout is None else dropout(weights)
        return mixing @ value, weights

    return attention


def torch_broadcast(*shapes):
    try:
        return tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        return None


VARIANTS = {
    "as written": {},
    "written_out_layer_norm": {"layer_norm": written_out_layer_norm},
    "torch_softmax": {"softmax": fused_softmax},
    "softmax_grad": {"softmax": softmax_with_grad},
    "masked_fill": {"attention": _attention_with(masked_fill=True)},
    "broadcast_shapes": {"broadcast": torch_broadcast},
    "reciprocal": {"softmax": reciprocal_softmax},
    "prescaled_queries": {"attention": _attention_with(prescaled_queries=True)},
    "plain": {"attention": _attention_with(masked_fill=True), "broadcast": torch_broadcast},
    "all_four": {"softmax": reciprocal_softmax, "attention": _attention_with(prescaled_queries=True)},
}


@contextlib.contextmanager
def swapped(changes):
    book.attention.softmax = changes.get("softmax", ORIGINAL["softmax"])
    book.residual.LayerNorm.forward = changes.get("layer_norm", ORIGINAL["layer_norm"])
    book.multi_head.scaled_dot_product_attention = changes.get("attention", ORIGINAL["attention"])
    # Attention's checks and multi-head attention's mask check both call _broadcast.
    book.attention._broadcast = book.multi_head._broadcast = changes.get("broadcast", ORIGINAL["broadcast"])
    try:
        yield
    finally:
        book.attention.softmax = ORIGINAL["softmax"]
        book.residual.LayerNorm.forward = ORIGINAL["layer_norm"]
        book.multi_head.scaled_dot_product_attention = ORIGINAL["attention"]
        book.attention._broadcast = book.multi_head._broadcast = ORIGINAL["broadcast"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_size_arguments(parser)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="time only these variants (default: all)")
    args = bench.parse_sizes(parser, argv)
    variants = {name: VARIANTS[name] for name in VARIANTS if name in args.variants or name == "as written"}

    ours, reference = bench.build_models(args)
    batch = bench.make_batch(args, torch.Generator().manual_seed(args.seed))
    ours_step = bench.make_step(ours, batch, args.vocab)
    torch_step = bench.make_step(reference, batch, args.vocab)

    # Every variant must compute the same function: compare dropout-free logits first.
    ours.eval()
    with torch.no_grad():
        expected = ours(batch[0], batch[1])
        for name, changes in variants.items():
            with swapped(changes):
                difference = (ours(batch[0], batch[1]) - expected).abs().max().item()
            assert difference < 1e-4, f"variant {name} changes the output by {difference}"
    ours.train()

    runs = {name: (lambda changes=changes: _run_swapped(changes, ours_step)) for name, changes in variants.items()}
    runs["torch.nn.Transformer"] = torch_step
    for run in runs.values():
        run()
        run()
    times = {name: [] for name in runs}
    for round_ in range(args.rounds):
        names = list(runs) if round_ % 2 == 0 else list(runs)[::-1]
        for name in names:
            times[name].append(bench.seconds_per_call(runs[name], args.steps))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.rounds} rounds x {args.steps} steps")
    for name, values in times.items():
        ratios = [a / b for a, b in zip(values, times["torch.nn.Transformer"])]
        low, _, high = statistics.quantiles(ratios, n=4)
        print(f"{name:38s} {statistics.median(values) * 1e3:7.1f} ms   ratio to torch "
              f"{statistics.median(ratios):.3f} (quartiles {low:.3f}..{high:.3f})")


def _run_swapped(changes, step):
    with swapped(changes):
        step()


if __name__ == "__main__":
    main()
