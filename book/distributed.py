# Generated from chapters/12_scaling_out.ipynb by tools/export.py: edit the notebook, not this file.
"""Beyond one process: devices, and data parallelism with torch.distributed (chapter 12).

Under ``torchrun --nproc-per-node N`` every process runs the same program. ``start`` joins the
process group torchrun describes in the environment (gloo on CPUs, nccl on GPUs); each process
trains on its 1/N slice of every global batch (``batch_slice``), and ``wrap`` puts the model in
DistributedDataParallel, which averages the gradients of all processes before every update, so
that all N copies of the model take the step a single process would take on the whole batch.
``GlobalTokenLoss`` makes that hold for targets of any length, ``seed_dropout`` gives each process
dropout masks of its own, and ``accumulate_gradients`` computes a large batch's gradient in pieces.
"""
import contextlib
import os
import random
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from book.data import make_batch, sample_examples
from book.train import label_smoothed_cross_entropy


def pick_device(name="auto"):
    """'auto' -> the GPU when PyTorch sees one (CUDA), else the CPU; 'cpu' or 'cuda' as asked.

    Returns a torch.device; asking for CUDA where there is none raises ValueError.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _check_device_name(name)
    return torch.device(name)


def _check_device_name(name):
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"device 'cuda' asked for, but {why}; use 'cpu' or 'auto'")


def batch_slice(dates, tokenizer, batch_size, seed, step, rank=0, world_size=1, device=None):
    """Process ``rank``'s rows of training batch ``step``: rows rank*b to (rank+1)*b - 1, b = batch_size / world_size.

    The global batch is batch_for_step's (the same examples in the same order), so the N slices
    together are exactly the batch one process would train on. Returns a Batch on ``device``.
    """
    b = local_batch_size(batch_size, world_size)
    _check_slice(seed, step, rank, world_size, device)
    examples = sample_examples(dates, batch_size, seed, step)
    return make_batch(examples[rank * b:(rank + 1) * b], tokenizer, device)


def local_batch_size(batch_size, world_size):
    """batch_size / world_size, the rows each process trains on; ValueError when it is not whole."""
    for name, value in (("batch_size", batch_size), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if batch_size % world_size:
        raise ValueError(f"the global batch of {batch_size} examples does not split into {world_size} equal "
                         f"parts, one per process; use a batch size divisible by {world_size}")
    return batch_size // world_size


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_slice(seed, step, rank, world_size, device):
    if not _is_int(rank) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in [0, world_size={world_size}), got {rank!r}")
    if not _is_int(step) or step < 1:
        raise ValueError(f"step must be a positive integer (training counts its steps from 1), got {step!r}")
    if not _is_int(seed) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be an integer in [0, 2**63), as TrainConfig takes, got {seed!r}")
    _check_device(device)


def _check_device(device):
    """None or a device this PyTorch can put tensors on ('cpu', 'cuda:1', 'meta', a torch.device); else ValueError."""
    if device is None:
        return
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch.device or its name, such as 'cpu' or 'cuda', got {device!r}") from None
    if device.type == "cuda":
        _check_device_name("cuda")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) "
                             f"are visible")


@dataclass(frozen=True)
class Processes:
    """Where this process stands: rank in 0..world_size-1, its rank on this machine, its device."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self):
        """Rank 0 alone prints progress and writes checkpoints."""
        return self.rank == 0


def launched():
    """True in a process started by torchrun, which describes the group in environment variables."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def start(device="auto"):
    """Join the group of processes torchrun started, or stand alone; returns this process's Processes.

    Under torchrun each process on a machine with GPUs takes the GPU of its local rank and the
    group talks through nccl; on CPUs through gloo. Without torchrun: one process, rank 0.
    """
    device = pick_device(device)
    if not launched():
        return Processes(rank=0, world_size=1, local_rank=0, device=device)
    rank, world_size, local_rank = _group_from_environment(device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    # init_method env:// reads MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE, all set by torchrun.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(rank, world_size, local_rank, device)


def finish():
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _group_from_environment(device):
    """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them, checked before any process waits for another."""
    values = {}
    for name, default in (("RANK", None), ("WORLD_SIZE", None), ("LOCAL_RANK", "0")):
        text = os.environ.get(name, default)
        try:
            values[name] = int(text)
        except ValueError:
            raise ValueError(f"the environment variable {name} must be an integer, got {text!r}") from None
    rank, world_size, local_rank = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"the environment says RANK={rank} and WORLD_SIZE={world_size}; "
                         f"a group needs WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
    if not 0 <= local_rank < world_size:
        raise ValueError(f"the environment says LOCAL_RANK={local_rank} and WORLD_SIZE={world_size}; "
                         f"a process's rank on its machine is in 0..WORLD_SIZE-1")
    if device.type == "cuda" and local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK={local_rank} needs GPU cuda:{local_rank}, but only "
                         f"{torch.cuda.device_count()} CUDA GPU(s) are visible")
    return rank, world_size, local_rank


class DistributedTransformer(DistributedDataParallel):
    """DistributedDataParallel around a Transformer; ``config`` is the model's, as train_step expects."""

    @property
    def config(self):
        return self.module.config


def wrap(model, processes):
    """The model itself for one process; in a group, the model inside DistributedDataParallel.

    The model must already be on processes.device. DDP copies rank 0's weights to every process
    once, then averages the gradients across the group during each backward pass. The positional
    table is a constant buffer, so there is nothing to re-broadcast before each forward.
    """
    _check_model_device(model, processes.device)
    if not dist.is_initialized():
        return model
    device_ids = [processes.device.index] if processes.device.type == "cuda" else None
    return DistributedTransformer(model, device_ids=device_ids, forward_sync_buffers=False)


def any_process(flag, processes):
    """True on every process as soon as ``flag`` is True on one: a Ctrl-C stops all at the same step."""
    if not dist.is_initialized():
        return bool(flag)
    vote = torch.tensor([int(flag)], device=processes.device)
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return bool(vote.item())


def _check_model_device(model, device):
    found = {t.device for t in [*model.parameters(), *model.buffers()]}
    elsewhere = [d for d in found
                 if d.type != device.type or (None not in (d.index, device.index) and d.index != device.index)]
    if elsewhere:
        raise ValueError(f"the model is on {', '.join(sorted(map(str, found)))}, but this process trains on "
                         f"{device}; build it there (build_model(..., device)) before wrapping it")


class GlobalTokenLoss:
    """A loss_fn for train_step: chapter 8's smoothed loss, averaged over every real target token of the global batch.

    Process r of N, whose slice holds n_r of the global batch's n real target tokens, returns
    N * (n_r / n) * L_r, L_r being the mean loss of its slice. DDP averages the N gradients, which
    gives the gradient of the mean over all n tokens, whatever the lengths of the targets in each
    slice. One all-reduce brings n, the summed loss and the tokens predicted right to every
    process; after each call ``loss`` and ``token_accuracy`` are the global batch's. In one process
    n_r = n and the loss is chapter 8's. logits: (B, T, V); target: (B, T), pad_id where empty.
    """

    world_size = 1

    def __call__(self, logits, target, smoothing, pad_id):
        slice_mean = label_smoothed_cross_entropy(logits, target, smoothing, pad_id)  # L_r
        real = target != pad_id
        n_r = real.sum().to(slice_mean.dtype)
        right = ((logits.argmax(-1) == target) & real).sum().to(slice_mean.dtype)
        totals = torch.stack([n_r, slice_mean.detach() * n_r, right])
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        if self.world_size > 1:
            dist.all_reduce(totals)  # now over all slices: n, the summed loss, the tokens predicted right
        n, summed, right = totals.tolist()
        self.loss, self.token_accuracy = summed / n, right / n
        return slice_mean * (n_r / n * self.world_size)

    def record(self, history):
        """Replace the last step's loss and token accuracy, this process's slice's, by the global batch's."""
        if self.world_size > 1:
            history["loss"][-1], history["token_accuracy"][-1] = self.loss, self.token_accuracy


def seed_dropout(seed, step, rank):
    """Seed this process's random numbers, and so dropout's masks, for training step ``step``.

    Each (seed, rank, step) gets a stream of its own: the N processes drop different units, as one
    process does across the rows of a whole batch, and a resumed run draws the masks of a run that
    never stopped. Call it after building the model, whose initial weights come from ``seed``
    alone and are the same on every process.
    """
    _check_dropout_seed(seed, step, rank)
    torch.manual_seed(random.Random(f"dropout:{seed}:{rank}:{step}").getrandbits(63))


def _check_dropout_seed(seed, step, rank):
    if not _is_int(rank) or rank < 0:
        raise ValueError(f"rank must be a non-negative integer, got {rank!r}")
    if not _is_int(step) or step < 1:
        raise ValueError(f"step must be a positive integer (training counts its steps from 1), got {step!r}")
    if not _is_int(seed) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be an integer in [0, 2**63), as TrainConfig takes, got {seed!r}")


def accumulate_gradients(model, micro_batches, smoothing):
    """Leave in every .grad the gradient of one step on all ``micro_batches`` together, one backward each.

    Each micro-batch's loss is its tokens' summed loss over n, the real target tokens of all
    micro-batches (of all processes, under DDP), times N, as in GlobalTokenLoss; the backward passes
    add their gradients up. Inside DDP, no_sync skips the all-reduce of every micro-batch but the
    last, whose backward all-reduces the accumulated sums once. The optimizer's step comes next.
    micro_batches: Batches with src (b, S) and tgt_in, tgt_out (b, T), any b, S and T.
    """
    _check_micro_batches(micro_batches)
    pad_id = model.config.pad_id
    counts = [(batch.tgt_out != pad_id).sum() for batch in micro_batches]  # n_r of each micro-batch
    n = torch.stack(counts).sum()
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    if world_size > 1:
        dist.all_reduce(n)
    model.zero_grad(set_to_none=True)
    for i, (batch, n_r) in enumerate(zip(micro_batches, counts)):
        last = i == len(micro_batches) - 1
        quiet = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else contextlib.nullcontext()
        with quiet:
            logits = model(batch.src, batch.tgt_in)
            loss = label_smoothed_cross_entropy(logits, batch.tgt_out, smoothing, pad_id)
            (loss * (n_r / n * world_size)).backward()


def _check_micro_batches(micro_batches):
    if isinstance(micro_batches, (str, bytes)) or not hasattr(micro_batches, "__len__") or len(micro_batches) == 0:
        raise ValueError(f"micro_batches must be a non-empty list of Batches, got {micro_batches!r:.80}")
