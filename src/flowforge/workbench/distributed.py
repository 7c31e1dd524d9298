"""Distributed training under ``torchrun``: the process group and each rank's device."""

from __future__ import annotations

import os

import torch

from .errors import WorkbenchError

__all__ = ["dist_env", "init_distributed", "device", "barrier"]


def dist_env() -> tuple[int, int]:
    """(rank, world size), from torch.distributed if running, else from torchrun's variables."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)


def _env_int(name: str, default: int) -> int:
    """torchrun's variable ``name`` as an integer (>= 1 for ``WORLD_SIZE``, a count; >= 0 for
    a rank), ``default`` when unset; a ``WorkbenchError`` naming it otherwise."""
    given = os.environ.get(name)
    if given is None:
        return default
    least = 1 if name == "WORLD_SIZE" else 0
    try:
        value = int(given)
    except ValueError:
        value = least - 1
    if value < least:
        raise WorkbenchError(
            f"the environment variable {name}={given!r} is not an integer >= {least} (torchrun "
            "sets it; unset it for a single process)"
        )
    return value


def init_distributed(device_name: str) -> bool:
    """Start the process group under torchrun (gloo on CPU, NCCL on GPU, ``auto`` resolved as
    :func:`device` resolves it), with this rank's GPU made current before any collective.
    True if started."""
    import torch.distributed as dist

    if _env_int("WORLD_SIZE", 1) <= 1 or dist.is_initialized():
        return False
    try:
        dev = device(str(device_name))
    except (WorkbenchError, ValueError, RuntimeError):  # (refused with its message later)
        dev = torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # (NCCL's collectives run on the current device)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return True


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def device(name: str, what: str = "train.device") -> torch.device:
    """The device ``train.device`` (or the option ``what``) names, for this rank;
    :class:`WorkbenchError` if absent."""
    rank_local = _env_int("LOCAL_RANK", 0)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise WorkbenchError(f"{what} is {name!r} but no GPU is available here")
        if name == "cuda":
            return torch.device("cuda", rank_local % torch.cuda.device_count())
        if _env_int("WORLD_SIZE", 1) > 1:
            raise WorkbenchError(
                f"{what} is {name!r} under torchrun, which would put every process on "
                "that one GPU; use cuda (each process takes the GPU of its LOCAL_RANK)"
            )
        index = int(name.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise WorkbenchError(
                f"{what} is {name!r} but only {torch.cuda.device_count()} GPU(s) exist"
            )
        return torch.device(name)
    return torch.device(name)
