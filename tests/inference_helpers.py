"""Tiny checkpoints in the payload format the stages write, with non-trivial weights (a zero classifier and
fresh BN statistics would make every output agree by accident)."""

from __future__ import annotations

from pathlib import Path

import torch

from simclrv2.checkpoint import save_checkpoint
from simclrv2.config import Config, config_to_dict
from simclrv2.models.spec import ModelSpec

CLASSES = ("cat", "dog", "emu")


def tiny_architecture(channels: int = 3, head_layers: int = 2) -> ModelSpec:
    return ModelSpec(depth=18, width_multiplier=0.125, sk_ratio=0.0, cifar_stem=True, in_channels=channels,
                        head_layers=head_layers, proj_dim=16)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
            elif name.endswith("running_mean") or name.endswith("bias") or "classifier" in name:
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=gen))


def _config(image_size: int) -> dict:
    values = config_to_dict(Config())
    values["data"].update(dataset="folder", image_size=image_size)
    return values


def write_classifier_run(run_dir: Path, image_size: int = 16, channels: int = 3, head_layer: int = 1,
                         classes: tuple[str, ...] = CLASSES, seed: int = 0) -> Path:
    """A finished fine-tuning run directory (``checkpoints/final.pt``)."""
    architecture = tiny_architecture(channels)
    model = architecture.build_classifier(head_layer, len(classes), seed=seed)
    _randomise(model, seed)
    save_checkpoint(run_dir / "checkpoints" / "final.pt", stage="finetune", kind="classifier",
                    architecture=architecture.to_dict(), image_size=image_size, head_layer=head_layer,
                    num_classes=len(classes),
                    classes=list(classes), config=_config(image_size), model=model.state_dict(), optimizer=None,
                    step=1, test_top1=None)
    return run_dir


def write_pretrain_run(run_dir: Path, image_size: int = 16, channels: int = 3, seed: int = 0) -> Path:
    """A finished pretraining run directory: encoder + whole projection head."""
    architecture = tiny_architecture(channels)
    model = architecture.build_simclr(seed)
    _randomise(model, seed)
    save_checkpoint(run_dir / "checkpoints" / "final.pt", stage="pretrain", kind="simclr",
                    architecture=architecture.to_dict(), image_size=image_size, config=_config(image_size),
                    model=model.state_dict(), optimizer=None, memory=None, ema_model=None, step=1,
                    knn_top1_at_init=None)
    return run_dir
