"""Losses: NT-Xent for contrastive pretraining and the distillation loss (SPEC stages 1 and 3).

Both are computed in float32 even under autocast: normalisation, similarities and log-softmax in bf16/fp16
are where SimCLR runs pick up NaNs (SPEC pitfall).
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
    from every process when ``gather`` is given) plus ``extra_negatives`` (already normalised, e.g. a memory
    queue). With DDP averaging gradients, the mean of the per-process losses is the global-batch loss.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise SimCLRv2Error(f"nt_xent_loss needs two (N, D) tensors of the same shape, got {tuple(z1.shape)} "
                            f"and {tuple(z2.shape)}")
    if temperature <= 0:
        raise SimCLRv2Error(f"temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    if n < 2 and gather is None and extra_negatives is None:
        raise SimCLRv2Error("nt_xent_loss needs at least 2 images per batch (the others are the negatives)")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        dtype = torch.promote_types(z1.dtype, torch.float32)  # at least fp32; float64 stays float64
        local = F.normalize(torch.cat([z1, z2]).to(dtype), dim=1)  # (2N, D): view 1 rows, then view 2 rows
        if gather is None:
            candidates, offset, n_global = local, 0, n
        else:
            all1, offset = gather(local[:n])  # (W*N, D)
            all2, _ = gather(local[n:])
            candidates, n_global = torch.cat([all1, all2]), all1.shape[0]
        logits = local @ candidates.T / temperature  # (2N, 2*N_global)
        rows = torch.arange(2 * n, device=local.device)
        own = torch.cat([rows[:n] + offset, rows[:n] + offset + n_global])  # each anchor's own column
        positive = torch.cat([rows[:n] + offset + n_global, rows[:n] + offset])  # its other view's column
        logits[rows, own] = float("-inf")  # an anchor is never its own negative
        if extra_negatives is not None and extra_negatives.numel():
            memory = extra_negatives.detach().to(dtype)
            logits = torch.cat([logits, local @ memory.T / temperature], dim=1)  # (2N, 2*N_global + M)
        return F.cross_entropy(logits, positive)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over the batch of -Σ_y P_T(y|x; τ) log P_S(y|x; τ), with P = softmax(logits / τ).

    The teacher is a fixed target: its logits are detached.
    """
    if student_logits.shape != teacher_logits.shape:
        raise SimCLRv2Error(f"student logits {tuple(student_logits.shape)} and teacher logits "
                            f"{tuple(teacher_logits.shape)} differ: do they predict the same classes?")
    if temperature <= 0:
        raise SimCLRv2Error(f"distillation temperature must be > 0, got {temperature}")
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        dtype = torch.promote_types(student_logits.dtype, torch.float32)
        teacher = F.softmax(teacher_logits.detach().to(dtype) / temperature, dim=1)
        log_student = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
        return -(teacher * log_student).sum(dim=1).mean()


def distillation_objective(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    labels: torch.Tensor | None = None,
    alpha: float = 1.0,
) -> torch.Tensor:
    """(1 − α)·CE(student, labels) + α·distillation_loss (SPEC stage 3); α = 1 uses no labels."""
    if not 0 <= alpha <= 1:
        raise SimCLRv2Error(f"alpha must be in [0, 1], got {alpha}")
    distill = distillation_loss(student_logits, teacher_logits, temperature)
    if alpha == 1:
        return distill
    if labels is None:
        raise SimCLRv2Error("alpha < 1 weighs a labelled term: pass labels, or use alpha = 1")
    return (1 - alpha) * F.cross_entropy(student_logits.float(), labels) + alpha * distill
