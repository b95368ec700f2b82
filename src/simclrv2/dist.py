"""Multi-process helpers that degrade to single-process no-ops: distributed is optional, never assumed.

Every function works in a plain single CPU process (rank 0 of 1, gathers are identities), so training code
calls them unconditionally. With a process group (``torchrun``), the contrastive loss needs the projections of
every process *with gradients flowing back to their owners* (``gather_with_grad``), and the data order must
be one permutation per epoch split into disjoint shards (``shard_indices``).
"""

from __future__ import annotations

import inspect
import os
from datetime import timedelta

import torch
import torch.distributed as torch_dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from simclrv2.errors import SimCLRv2Error

# The variables torchrun sets for every worker; the first three say "this process is one of many".
_RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT")
_MAX_DIMS = 8  # shape checks exchange a fixed-size vector


def _active() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    """This process's rank; 0 without a process group."""
    return torch_dist.get_rank() if _active() else 0


def world_size() -> int:
    """Number of processes; 1 without a process group."""
    return torch_dist.get_world_size() if _active() else 1


def local_rank() -> int:
    """This process's index on its machine (its CUDA device); 0 without a process group."""
    return int(os.environ.get("LOCAL_RANK", "0")) if _active() else 0


def is_main() -> bool:
    """True on the process that writes files and prints (rank 0); True without a process group."""
    return rank() == 0


def _int_env(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise SimCLRv2Error(f"{name}={value!r} must be an integer; launch with torchrun") from None


def init_distributed(device_type: str, timeout_s: float = 1800.0) -> bool:
    """Joins the process group described by torchrun's environment; returns True when distributed.

    Without RANK/WORLD_SIZE/LOCAL_RANK in the environment this is a single-process run and nothing happens
    (MASTER_ADDR alone, as some cluster scripts export it, does not count). NCCL is used for CUDA, gloo for
    everything else; on CUDA the current device becomes LOCAL_RANK before any collective runs.
    """
    if _active():
        return True
    present = [name for name in _RANK_VARS if name in os.environ]
    if not present:
        return False
    missing = [name for name in _RANK_VARS + _RENDEZVOUS_VARS if name not in os.environ]
    if missing:
        raise SimCLRv2Error(
            f"distributed environment is half-set: {', '.join(present)} given, {', '.join(missing)} missing; "
            "launch with torchrun, or unset these variables for a single-process run"
        )
    global_rank, world, local = (_int_env(name) for name in _RANK_VARS)
    if world < 1 or not 0 <= global_rank < world or local < 0:
        raise SimCLRv2Error(
            f"inconsistent distributed environment RANK={global_rank}, WORLD_SIZE={world}, "
            f"LOCAL_RANK={local}; launch with torchrun"
        )
    if not torch_dist.is_available():
        raise SimCLRv2Error("this PyTorch build has no torch.distributed; run a single process instead")
    kwargs = {}
    if device_type == "cuda":
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            found = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise SimCLRv2Error(
                f"LOCAL_RANK={local} needs CUDA device {local} but {found} are visible; "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local)
        # Binding the group to the device lets NCCL collectives (barrier included) know which GPU to use.
        kwargs["device_id"] = torch.device("cuda", local)
    backend = "nccl" if device_type == "cuda" else "gloo"
    timeout = timedelta(seconds=timeout_s)
    torch_dist.init_process_group(backend, init_method="env://", timeout=timeout, **kwargs)
    return True


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel that leaves BN buffers alone in the forward pass: with global BN every process
    already computes the same statistics, so re-broadcasting rank 0's would only cost time."""
    # torch >= 2.13 renames broadcast_buffers to forward_sync_buffers; both mean "no sync before each forward"
    no_forward_sync = ({"forward_sync_buffers": False}
                       if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                       else {"broadcast_buffers": False})
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **no_forward_sync)


def barrier() -> None:
    """Waits for every process (no-op without a process group)."""
    if _active():
        torch_dist.barrier()


def _check_equal_shapes(x: Tensor, what: str) -> None:
    """Collectives below need the same shape everywhere; a mismatch would hang or mix rows silently."""
    if not 1 <= x.dim() <= _MAX_DIMS:
        raise SimCLRv2Error(f"{what} needs 1 to {_MAX_DIMS} dimensions, got shape {tuple(x.shape)}")
    padded = [x.dim(), *x.shape] + [0] * (_MAX_DIMS - x.dim())
    shape = torch.tensor(padded, dtype=torch.int64, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(world_size())]
    torch_dist.all_gather(shapes, shape)
    if any(not torch.equal(s, shapes[0]) for s in shapes):
        found = [tuple(int(d) for d in s[1 : 1 + int(s[0])]) for s in shapes]
        raise SimCLRv2Error(
            f"{what} needs the same shape on every process, got {found} (by rank); "
            "shard with drop_last so every process has equal batches"
        )


def _gather_rows(x: Tensor) -> Tensor:
    parts = [torch.empty_like(x) for _ in range(world_size())]
    torch_dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)  # (world·N, ...)


class _GatherWithGrad(torch.autograd.Function):
    """Forward: all-gather rows. Backward: each process holds ∂loss_r/∂(all rows) for its own loss_r; the
    sum over processes is the gradient of Σ_r loss_r, and the owner keeps its own rows of it."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.rows = x.shape[0]
        return _gather_rows(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        torch_dist.all_reduce(grad, op=torch_dist.ReduceOp.SUM)
        start = rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """Concatenates every process's ``x`` (N, ...) → (world·N, ...) and returns this process's row offset.

    Gradients flow back to the owners: the backward sums every process's gradient w.r.t. the full tensor and
    hands each process its slice, so x receives ∂(Σ_r loss_r)/∂x. DDP then averages parameter gradients, which
    makes the effective objective the mean of the per-process losses. Every process must pass the same N
    (checked) and must run the backward (it contains a collective). Identity ``(x, 0)`` without a group.
    """
    if not _active():
        return x, 0
    _check_equal_shapes(x, "gather_with_grad")
    return _GatherWithGrad.apply(x), rank() * x.shape[0]


class _AllReduceSumWithGrad(torch.autograd.Function):
    """y = Σ_r x_r on every process; each copy of y feeds its own loss_r, so
    ∂(Σ_r loss_r)/∂x_r = Σ_r ∂loss_r/∂y: the all-reduced gradient."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = x.contiguous().clone()
        torch_dist.all_reduce(y, op=torch_dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        torch_dist.all_reduce(grad, op=torch_dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_grad(x: Tensor) -> Tensor:
    """Differentiable Σ over processes (global BN statistics); identity without a group.

    Every process must run the backward (it contains a collective)."""
    if not _active():
        return x
    return _AllReduceSumWithGrad.apply(x)


def _collective_device(x: Tensor) -> torch.device:
    """NCCL only moves CUDA tensors; metrics and labels often live on the CPU, so they travel via this GPU."""
    if x.device.type == "cpu" and torch_dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return x.device


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean over processes of a detached metric (integers become float64), on x's device; identity without a
    group."""
    if not _active():
        return x
    y = x.detach().to(_collective_device(x), copy=True)
    if not y.is_floating_point():
        y = y.double()
    torch_dist.all_reduce(y, op=torch_dist.ReduceOp.SUM)
    return (y / world_size()).to(x.device)


def all_reduce_max(x: Tensor) -> Tensor:
    """Element-wise maximum over processes (flags every process must agree on); identity without a group."""
    if not _active():
        return x
    y = x.detach().to(_collective_device(x), copy=True)
    torch_dist.all_reduce(y, op=torch_dist.ReduceOp.MAX)
    return y.to(x.device)


def all_gather_tensor(x: Tensor) -> Tensor:
    """(world·N, ...) concatenation without gradients, for evaluation features and labels, on x's device.

    Every process must pass the same N (checked with a clear error): shard evaluation data with drop_last, or
    pad and trim. Identity without a group.
    """
    if not _active():
        return x
    y = x.detach().to(_collective_device(x))
    _check_equal_shapes(y, "all_gather_tensor")
    with torch.no_grad():
        return _gather_rows(y).to(x.device)


def _shard(
    n: int, epoch: int, seed: int, this_rank: int, world: int, shuffle: bool, drop_last: bool,
    batch_size: int | None,
) -> Tensor:
    if n < 0 or epoch < 0:
        raise SimCLRv2Error(f"shard_indices needs n >= 0 and epoch >= 0, got n={n}, epoch={epoch}")
    if batch_size is not None and batch_size < 1:
        raise SimCLRv2Error(f"shard_indices batch_size must be >= 1, got {batch_size}")
    if shuffle:
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    if drop_last:
        unit = world * (batch_size or 1)
        if n < unit:
            raise SimCLRv2Error(
                f"{n} items are fewer than one global batch of {unit} ({world} processes"
                f"{f' x {batch_size}' if batch_size else ''}); lower the batch size or use more data"
            )
        order = order[: n - n % unit]
    # Strided shards: step k of every process together covers one contiguous block of the permutation.
    return order[this_rank::world]


def shard_indices(
    n: int, epoch: int, seed: int, shuffle: bool = True, drop_last: bool = True, batch_size: int | None = None
) -> Tensor:
    """This process's indices into n items for one epoch (int64, CPU).

    One permutation per (seed, epoch), drawn from ``torch.Generator().manual_seed(seed + epoch)`` so every
    process draws the same one, split into ``world_size`` disjoint strided shards (no duplicates, no padding).
    With ``drop_last`` the permutation is cut to a multiple of world_size (of world_size·batch_size when
    given) so every process runs the same number of steps; without it the first ``n % world`` shards are one
    longer.
    """
    return _shard(n, epoch, seed, rank(), world_size(), shuffle, drop_last, batch_size)

