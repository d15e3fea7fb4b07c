"""Training across processes under torchrun (PyTorch DDP): the process group, this process's place in
it, and the few collectives the trainers share.

`torchrun` sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; a process started without
it is a job of one, which touches no torch.distributed at all and trains exactly as it always has.
The backend is NCCL when CUDA is available (one GPU per process, by LOCAL_RANK), gloo on CPU. Every
collective has a deadline (WARDGATE_DIST_TIMEOUT_S, default 600 s): a rank that dies or stalls ends
the job with an error on the others instead of leaving them waiting forever.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

TIMEOUT_ENV = "WARDGATE_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Ranks:
    """This process's rank among `world` processes, the device it trains on and the backend joining them."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: not launched by torchrun

    @property
    def main(self) -> bool:
        """Rank 0: the one process that reads checkpoints, writes files and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def shard(self, indexes: list[int]) -> list[int]:
        """This rank's part of a batch: every world-th index from its rank on, so that a batch sorted
        by length gives each rank rows of about the same lengths. Disjoint, and together the batch."""
        return indexes[self.rank::self.world]

    def broadcast(self, value):
        """Rank 0's `value`, on every rank (any picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def gather(self, value) -> list:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def sum(self, *values: float) -> list[float]:
        """The sum over ranks of each of `values`."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def seed_dropout(self, seed: int) -> None:
        """Rank 0 keeps the random stream a single process would have; every other rank gets one of its
        own (derived from the seed and its rank), so that the shards' dropout masks are independent."""
        if self.rank:
            torch.manual_seed(int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0]))

    def rng_state(self) -> dict:
        """This process's torch random state (and its GPU's), to store in a checkpoint."""
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def restore_rng(self, checkpoint: dict) -> None:
        """Each rank's random state from a checkpoint ("rng_by_rank": every rank's rng_state(); "rng":
        rank 0's CPU state, all a single process's checkpoint has). With as many ranks as saved it,
        each gets its own back; otherwise rank 0 gets the saved rank 0's and the others keep theirs."""
        saved = checkpoint.get("rng_by_rank")
        if saved and len(saved) == self.world:
            torch.set_rng_state(saved[self.rank]["cpu"])
            if self.device.type == "cuda" and "cuda" in saved[self.rank]:
                torch.cuda.set_rng_state(saved[self.rank]["cuda"], self.device)
        elif self.main:
            torch.set_rng_state(checkpoint["rng"])


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _timeout() -> timedelta:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: give the seconds a rank may wait for the others") from None
    return timedelta(seconds=seconds)


@contextlib.contextmanager
def process_group() -> Iterator[Ranks]:
    """The job this process belongs to: one process (no torchrun), or torchrun's process group, joined
    here (or taken over as it is, if the caller has already joined one) and left on the way out."""
    if not launched_by_torchrun() and not dist.is_initialized():
        yield Ranks()
        return
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)  # before the group: NCCL binds each rank to its own GPU
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=_timeout())
    ranks = Ranks(rank=dist.get_rank(), world=dist.get_world_size(), device=device, backend=dist.get_backend())
    yield ranks
    # Left only on success: after a failure the process exits and torchrun ends the others; tearing
    # down a group with a collective still pending could itself wait on the rank that failed.
    if joined:
        dist.destroy_process_group()
