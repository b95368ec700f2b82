"""Tiny image folders, configs and run readers for the streaming tests, and the body of the two-process sharding
test."""

from __future__ import annotations

import os
import signal
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

import simclrv2.stages.classify as classify_module
from simclrv2.checkpoint import load_checkpoint, read_metrics
from simclrv2.config import Config, load_config
from simclrv2.errors import Interrupted

TINY_RUN = {"data.dataset": "folder", "data.channels": "3", "data.val_size": "8", "data.workers": "0",
            "model.width_multiplier": "0.125", "model.proj_dim": "16", "run.knn_every": "0", "run.progress": "false",
            "run.precision": "fp32"}


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


def tall_images(n: int, seed: int = 0) -> np.ndarray:
    """(n, 48, 40, 3) smooth images: 48 high, 40 wide, so decoding centre-crops a square."""
    return smooth_images(n, 48, seed)[:, :, 4:44]


def write_splits(root: Path, train: np.ndarray, test: np.ndarray | None = None) -> Path:
    """``root/train`` and, given its images, ``root/test``: each spread round-robin over four class folders."""
    write_folder(root / "train", train, classes=4)
    if test is not None:
        write_folder(root / "test", test, classes=4)
    return root


def tiny_config(data_dir: Path, size: int, values: dict) -> Config:
    """A width-0.125 network (proj_dim 16) on the image folder ``data_dir`` at ``size`` px: RGB, 8 validation
    images, no workers, fp32, no progress bar, no kNN monitor; then ``values`` (the module's and the test's)."""
    values = {**TINY_RUN, "data.data_dir": data_dir, "data.image_size": size, **values}
    return load_config(None, {k: str(v) for k, v in values.items()})


def losses(run_dir: Path) -> list[float]:
    """Every training loss a run logged, in order."""
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["event"] == "train"]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "final.pt")["model"]


def signal_at_call(monkeypatch, module: ModuleType, name: str, call: int) -> None:
    """Call number ``call`` of ``module.name`` raises SIGTERM first, as a pre-emption mid-run would."""
    real, calls = getattr(module, name), {"n": 0}

    def stopping(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            signal.raise_signal(signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, stopping)


def classifier_views(stage: Callable, config: Config, run_dir: Path, monkeypatch) -> torch.Tensor:
    """Every step's (B, C, S, S) training views of a classifier stage's run (supervised, distill)."""
    seen = []
    with monkeypatch.context() as patch:  # scoped: an undo() would also drop the test's own XDG_CACHE_HOME
        for name in ("crop_flip", "flip_crops"):
            real = getattr(classify_module, name)
            patch.setattr(classify_module, name, lambda *a, real=real, **k: seen.append(real(*a, **k)) or seen[-1])
        stage(config, run_dir)
    return torch.stack(seen)


def assert_resume_after_a_signal_at_step_2_is_exact(stage: Callable, config: Config, crop: str, tmp_path: Path,
                                                     monkeypatch) -> None:
    """A classifier stage (supervised, distill) run straight, then stopped by SIGTERM as it makes step 2's views
    (``crop``: "pad" or "resized") and resumed: the straight run's losses and final weights, bit for bit."""
    stage(config, tmp_path / "straight")
    with monkeypatch.context() as patch, pytest.raises(Interrupted, match="--resume"):
        signal_at_call(patch, classify_module, "pad_crop_flip" if crop == "pad" else "flip_crops", 2)
        stage(config, tmp_path / "resumed")
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["step"] == 2
    stage(config, tmp_path / "resumed", resume=True)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


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
