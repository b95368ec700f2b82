"""A picture of the augmentation: a few training images and their two views, written when pretraining starts,
so a user sees what the network is asked to match before spending hours on it (crops too small, colours gone)."""

from __future__ import annotations

from pathlib import Path

import torch

from simclrv2.augment.pipeline import AugmentConfig, simclr_views


def save_augmentation_preview(images: torch.Tensor, config: AugmentConfig, path: Path, seed: int = 0) -> Path | None:
    """Originals (top row) and their two views (rows below) of ``images`` (N, C, H, W) uint8 as a PNG; None
    when matplotlib (the ``report`` extra) is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    images = images.cpu()
    view1, view2 = simclr_views(images, config, torch.Generator().manual_seed(seed))
    rows = [("original", images.float() / 255), ("view 1", view1), ("view 2", view2)]
    n = images.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.4 * len(rows)), squeeze=False)
    for r, (name, batch) in enumerate(rows):
        for c in range(n):
            picture = batch[c].permute(1, 2, 0).clamp(0, 1).numpy()
            axis = axes[r][c]
            axis.imshow(picture[..., 0] if picture.shape[2] == 1 else picture, cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 0:
                axis.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
