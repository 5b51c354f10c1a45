"""Process groups under torchrun: rank and world size, joining the group, and the collectives
the stages use (sums and gathers in one call, a refusal on rank 0 that reaches every rank)."""

from __future__ import annotations

import os

import torch

from llamantino.core.errors import LlamantinoError


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed() -> tuple[int, int, torch.device]:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPU)."""
    rank, world, local_rank = dist_env()
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return rank, world, device


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_sum(value: float, device) -> float:
    return all_reduce_sums([value], device)[0]


def all_reduce_sums(values: list[float], device) -> list[float]:
    """Each value summed over the ranks, in one collective (float64: token counts stay exact)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()
    return list(values)


def on_rank0(fn):
    """Run `fn` on rank 0 only and hand its result, or its LlamantinoError, to every rank:
    a refusal on rank 0 (say, of the output folder) then stops all ranks at once instead of
    leaving the others waiting in a collective."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return fn()
    box = [(None, None)]
    if torch.distributed.get_rank() == 0:
        try:
            box = [(fn(), None)]
        except LlamantinoError as exc:
            box = [(None, str(exc))]
    torch.distributed.broadcast_object_list(box, src=0)
    result, error = box[0]
    if error is not None:
        raise LlamantinoError(error)
    return result


def all_gather_object(obj) -> list:
    """`obj` from every rank, in rank order ([obj] on a single process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out
