"""Losses: NT-Xent for contrastive pretraining and the distillation loss (docs/recipe.md#nt-xent, #distillation-loss).

Both are computed in float32 even under autocast: normalisation, similarities and log-softmax in bf16/fp16
are where SimCLR runs pick up NaNs (docs/recipe.md#numerics).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from simclrv2.errors import SimCLRv2Error

# gather(x (N, D)) -> (rows of every process concatenated (W*N, D), offset of this process's rows);
# gradients must flow back to the rows' owners (simclrv2.dist.gather_with_grad).
Gather = Callable[[torch.Tensor], tuple[torch.Tensor, int]]


def nt_xent_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.5,
    gather: Gather | None = None,
    extra_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """NT-Xent (SimCLR): mean over this process's 2N anchors of

        -log( exp(sim(i, p) / τ) / Σ_{k ≠ i} exp(sim(i, k) / τ) ),

    sim = cosine similarity, p = the other view of the same image, k over all 2·N_global views (gathered
    from every process when ``gather`` is given) plus the M rows of ``extra_negatives`` (already normalised,
    e.g. a memory queue; never differentiated). With DDP averaging gradients and ``gather`` summing them back
    to the owners, the mean of the per-process losses is the global-batch loss.

    Computed as one (2N, 2·N_global + M) similarity matmul and a cross-entropy whose target is the positive's
    column; the anchor's own column is set to -inf (exactly zero weight in any precision).
    """
    _check_nt_xent_inputs(z1, z2, temperature, gather, extra_negatives)
    n = z1.shape[0]
    with torch.autocast(device_type=z1.device.type, enabled=False):
        dtype = torch.promote_types(z1.dtype, torch.float32)  # at least fp32; float64 stays float64
        local = F.normalize(torch.cat([z1, z2]).to(dtype), dim=1)  # (2N, D): view-1 rows, then view-2 rows
        if gather is None:
            views, offset, n_global = [local], 0, n
        else:
            all1, offset = gather(local[:n])  # (N_global, D)
            all2, offset2 = gather(local[n:])
            _check_gathered(all1, all2, offset, offset2, local[:n])
            n_global = all1.shape[0]
            views = [all1.to(dtype), all2.to(dtype)]
        if extra_negatives is not None:
            views.append(extra_negatives.detach().to(device=local.device, dtype=dtype))
        # a fresh tensor, so a queue updated in place before backward does not break autograd
        candidates = torch.cat(views)  # (2·N_global + M, D)
        logits = local @ candidates.T / temperature  # (2N, 2·N_global + M)
        anchors = torch.arange(n, device=local.device)
        own = torch.cat([anchors + offset, anchors + offset + n_global])  # each anchor's own column
        positive = torch.cat([anchors + offset + n_global, anchors + offset])  # its other view's column
        logits[torch.arange(2 * n, device=local.device), own] = float("-inf")  # an anchor is not its own negative
        return F.cross_entropy(logits, positive)


def _check_nt_xent_inputs(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, gather: Gather | None, extra: torch.Tensor | None
) -> None:
    if z1.shape != z2.shape or z1.dim() != 2:
        raise SimCLRv2Error(f"nt_xent_loss needs two (N, D) tensors of the same shape, got {tuple(z1.shape)} "
                            f"and {tuple(z2.shape)}")
    if not temperature > 0:
        raise SimCLRv2Error(f"temperature must be > 0, got {temperature}")
    if extra is not None and (extra.dim() != 2 or extra.shape[1] != z1.shape[1]):
        raise SimCLRv2Error(f"extra_negatives must be (M, {z1.shape[1]}) like the projections, "
                            f"got {tuple(extra.shape)}")
    has_extra = extra is not None and extra.shape[0] > 0
    if z1.shape[0] < 2 and gather is None and not has_extra:
        raise SimCLRv2Error(f"nt_xent_loss needs at least 2 images per batch (the others are the negatives), "
                            f"got {z1.shape[0]}; raise the batch size")


def _check_gathered(all1: torch.Tensor, all2: torch.Tensor, offset1: int, offset2: int, mine: torch.Tensor) -> None:
    """A wrong gather would silently pick wrong positives; its result is cheap to check."""
    n, dim = mine.shape
    n_global = all1.shape[0]
    shapes_ok = all1.shape == (n_global, dim) and all2.shape == all1.shape
    if shapes_ok and offset1 == offset2 and 0 <= offset1 <= n_global - n:
        return
    raise SimCLRv2Error(f"gather returned rows {tuple(all1.shape)} / {tuple(all2.shape)} at offsets {offset1} / "
                        f"{offset2} for {n} local rows of width {dim}: it must return (every process's rows, this "
                        "process's offset), as dist.gather_with_grad does")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over the batch of -Σ_y P_T(y|x; τ) log P_S(y|x; τ), with P = softmax(logits / τ).

    The teacher is a fixed target: its logits are detached. Computed in (at least) float32.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise SimCLRv2Error(f"distillation needs (B, classes) student and teacher logits of the same shape, got "
                            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}: do they predict "
                            "the same classes?")
    if not temperature > 0:
        raise SimCLRv2Error(f"distillation temperature must be > 0, got {temperature}")
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        dtype = torch.promote_types(student_logits.dtype, torch.float32)
        teacher = F.softmax(teacher_logits.detach().to(dtype) / temperature, dim=1)  # (B, C)
        log_student = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)  # (B, C)
        return -(teacher * log_student).sum(dim=1).mean()


def distillation_objective(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    labels: torch.Tensor | None = None,
    alpha: float = 1.0,
) -> torch.Tensor:
    """(1 − α)·CE(student, labels) + α·distillation_loss (docs/recipe.md#distillation-loss); α = 1 needs no labels.

    The labelled term uses the plain logits (τ = 1), as a supervised loss would, and averages over the rows whose
    label is >= 0: a batch of unlabeled images (label −1) mixed with labelled ones; with none labelled it is 0.
    """
    if not 0 <= alpha <= 1:
        raise SimCLRv2Error(f"alpha must be in [0, 1], got {alpha}")
    distill = distillation_loss(student_logits, teacher_logits, temperature)
    if alpha == 1:
        return distill
    if labels is None:
        raise SimCLRv2Error("alpha < 1 weighs a labelled term: pass labels, or use alpha = 1")
    if labels.shape != student_logits.shape[:1]:
        raise SimCLRv2Error(f"labels must be ({student_logits.shape[0]},) class indices, got {tuple(labels.shape)}")
    known = labels >= 0
    if not bool(known.any()):
        return alpha * distill
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        dtype = torch.promote_types(student_logits.dtype, torch.float32)
        supervised = F.cross_entropy(student_logits[known].to(dtype), labels[known])
    return (1 - alpha) * supervised + alpha * distill
