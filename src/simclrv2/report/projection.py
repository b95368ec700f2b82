"""PCA of embeddings down to two dimensions, for a picture of how the classes separate."""

from __future__ import annotations

import torch

from simclrv2.errors import SimCLRv2Error

OVERSAMPLING = 8  # extra subspace vectors: the error shrinks as (lambda_{k+8} / lambda_k) per iteration
MAX_ITERATIONS = 100  # bounds the time (about 4 s at N = 2048) where the spectrum is nearly flat
TOLERANCE = 1e-10  # on k - ||V_t^T V_{t-1}||_F^2, the squared sines of the angles between successive subspaces
EXACT_UP_TO = 512  # a full eigendecomposition up to this size takes well under a second


def _top_eigh(c: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k) eigenvectors of the symmetric positive semi-definite (N, N) ``c`` with the largest eigenvalues.

    A full ``eigh`` is O(N^3): 10 s for N = 2048 (ResNet-50 features) on a laptop CPU. Subspace iteration on
    k + 8 vectors is O(N^2) a step; the start is seeded, so the result does not depend on global random state.
    Where the leading eigenvalues are nearly equal it may stop at MAX_ITERATIONS on a mix of their directions:
    those explain almost the same variance, so the picture is as faithful.
    """
    n = c.shape[0]
    if n <= EXACT_UP_TO:
        return torch.linalg.eigh(c)[1][:, -k:].flip(1)  # eigh sorts eigenvalues ascending
    start = torch.randn(n, k + OVERSAMPLING, generator=torch.Generator().manual_seed(0), dtype=c.dtype)
    image, previous = c @ start, None
    for _ in range(MAX_ITERATIONS):
        basis = torch.linalg.qr(image).Q  # (N, k + 8): one power step, re-orthonormalised
        image = c @ basis  # reused by the next step
        _, rotation = torch.linalg.eigh(basis.T @ image)  # Rayleigh-Ritz within the subspace
        top = basis @ rotation[:, -k:].flip(1)  # (N, k)
        if previous is not None and k - (top.T @ previous).square().sum() < TOLERANCE:
            break
        previous = top
    return top


def _top_eigenvectors(x: torch.Tensor, k: int) -> torch.Tensor:
    """(D, k) leading eigenvectors of X^T X for centred (M, D) ``x``, from the smaller of the two Gram matrices:
    X X^T (M, M) has the same non-zero eigenvalues, with eigenvectors u mapping to X^T u."""
    m, d = x.shape
    x32 = x.float()  # the Gram product is the one O(M D min(M, D)) step; float32 keeps it fast
    if d <= m:
        return _top_eigh((x32.T @ x32).double(), k)
    samples = _top_eigh((x32 @ x32.T).double(), k)  # (M, k)
    return torch.nn.functional.normalize(x.T @ samples, dim=0)  # (D, k)


def principal_components(features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, k) float32 coordinates of the centred features on their k leading principal directions, and the
    (k,) fraction of the total variance each direction explains.

    The directions are the eigenvectors of the covariance (X - mean)^T (X - mean) with the largest
    eigenvalues. The sign of a direction is arbitrary, so it is fixed to make its largest-magnitude entry
    positive: the same data always gives the same picture.
    """
    if features.dim() != 2:
        raise SimCLRv2Error(f"PCA needs features of shape (M, D), got {tuple(features.shape)}")
    m, d = features.shape
    if m < 2 or d < k:
        raise SimCLRv2Error(f"PCA to {k} dimensions needs at least 2 samples of {k} dimensions, got {(m, d)}")
    x = features.detach().to("cpu", torch.float64)
    x = x - x.mean(dim=0, keepdim=True)  # (M, D)
    directions = _top_eigenvectors(x, k).T  # (k, D)
    largest = directions.abs().argmax(dim=1, keepdim=True)  # (k, 1)
    directions = directions * torch.where(directions.gather(1, largest) < 0, -1.0, 1.0).to(x.dtype)
    coords = x @ directions.T  # (M, k)
    total = x.square().sum()  # the trace of the covariance: the variance over all directions
    explained = coords.square().sum(dim=0) / total if total > 0 else torch.zeros(k, dtype=x.dtype)
    return coords.float(), explained.float()


def pca_2d(features: torch.Tensor) -> torch.Tensor:
    """(M, D) features -> (M, 2) float32 coordinates on their two leading principal directions (see
    :func:`principal_components`)."""
    return principal_components(features, 2)[0]
