"""torch.distributed plumbing: one process per GPU (or CPU worker), launched by torchrun.

balseg's rule for several processes: every rank trains (DistributedDataParallel), scores
its share of the pool and evaluates its share of each split; rank 0 alone writes files and
the label database. Collective calls carry a timeout, so a rank that dies makes the others
fail with a clear error instead of waiting forever.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from balseg.errors import DistributedError

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str = "auto", timeout_s: float | None = None) -> DistContext:
    """Join the process group that torchrun describes in the environment, if any.

    NCCL on GPUs, gloo on CPUs. ``BALSEG_DIST_TIMEOUT`` (seconds) overrides the timeout.
    """
    from balseg.devices import resolve_device

    resolved = resolve_device(device)
    want_cuda = resolved.type == "cuda"
    if not launched_by_torchrun():
        return DistContext(device=resolved)
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    timeout = float(os.environ.get("BALSEG_DIST_TIMEOUT", timeout_s or DEFAULT_TIMEOUT_S))
    if want_cuda:
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout))
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev)


def shard(items: Sequence[T], ctx: DistContext) -> list[T]:
    """This rank's share: every world_size-th item, so shares differ by at most one."""
    return list(items[ctx.rank :: ctx.world_size])


def _guard(what: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as err:  # gloo/nccl raise RuntimeError or DistBackendError
        raise DistributedError(
            f"distributed step '{what}' failed (another rank probably died or timed out): {err}"
        ) from err


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext, what: str) -> torch.Tensor:
    if ctx.enabled:
        _guard(what, dist.all_reduce, tensor, dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: T, ctx: DistContext, what: str) -> list[T]:
    """Every rank's ``obj`` on every rank, in rank order."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    _guard(what, dist.all_gather_object, out, obj)
    return out


def broadcast_object(obj: T | None, ctx: DistContext, what: str) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj  # type: ignore[return-value]
    box = [obj]
    _guard(what, dist.broadcast_object_list, box, 0)
    return box[0]  # type: ignore[return-value]


def barrier(ctx: DistContext, what: str) -> None:
    if ctx.enabled:
        _guard(what, dist.barrier)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
