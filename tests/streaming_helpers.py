"""Tiny image folders for the streaming tests, and the body of the two-process sharding test."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8 images of low-frequency patterns: bilinear resamplers agree on them closely."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, 4, 4, 3)).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.Resampling.BICUBIC)) for c in coarse])


def write_folder(root: Path, images: np.ndarray, classes: int = 0, fmt: str = "png") -> Path:
    """Writes ``images`` into ``root`` (flat, or spread round-robin over ``classes`` class folders)."""
    for i, pixels in enumerate(images):
        folder = root / f"class{i % classes}" if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"img{i:04d}.{fmt}")
    return root


def identity_images(n: int, size: int) -> np.ndarray:
    """Constant images whose red and green channels spell their position: any crop of image i says i."""
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    images[..., 0] = (np.arange(n) % 256)[:, None, None]
    images[..., 1] = (np.arange(n) // 256)[:, None, None]
    return images


def image_ids(crops: torch.Tensor) -> list[int]:
    """The positions spelt by identity-image crops (B, C, S, S)."""
    return (crops[:, 0, 0, 0].long() + 256 * crops[:, 1, 0, 0].long()).tolist()


def read_epoch_worker(rank: int, world: int, port: int, data: str, kind: str, out: str) -> None:
    """One process of a gloo group: streams one epoch of ``data`` (folder or shards) and saves what it read."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        from simclrv2 import dist
        from simclrv2.augment import draw_crop_randoms
        from simclrv2.data.streaming import BatchSource, CropDataset, folder_index
        from simclrv2.data.streaming.shards import shard_index

        dist.init_distributed("cpu")
        source = folder_index(data) if kind == "folder" else shard_index(data)
        batch, steps = 4, len(source) // (4 * world)
        generator = torch.Generator()
        plan = lambda step, n: draw_crop_randoms(2 * n, generator.manual_seed(step))  # noqa: E731
        loader = BatchSource(CropDataset(source, 8, 3, (0.08, 1.0), (0.75, 4 / 3)), batch, steps, plan, 1,
                             torch.device("cpu"))
        order = dist.shard_indices(len(source), 0, 0, batch_size=batch)
        seen = [image_ids(crops[:batch]) for crops in loader(0, order, 0)]
        torch.save({"seen": seen, "order": order}, Path(out) / f"rank{rank}.pt")
    except BaseException:
        (Path(out) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
