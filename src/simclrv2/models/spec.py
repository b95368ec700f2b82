"""The one description of a network: a frozen, resolved spec that models are built from and checkpoints store.

``[model]`` (config) says what the user asked for; the spec is what was built for the data (the stem depends on
the image size, the input channels on the data), so a checkpoint can be rebuilt exactly and a checkpoint of
another network is caught with a message that names the difference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from simclrv2.config.sections import ModelConfig
from simclrv2.errors import SimCLRv2Error
from simclrv2.models.networks import Classifier, SimCLRModel, build_simclr_model


@dataclass(frozen=True)
class ModelSpec:
    depth: int
    width_multiplier: float
    sk_ratio: float
    cifar_stem: bool
    in_channels: int
    head_layers: int
    proj_dim: int
    # pooling padded as the authors' TensorFlow code pads it (models/tf_pooling.py); networks imported from
    # their checkpoints need it. Absent from checkpoints written before it existed, hence the default.
    tf_pooling: bool = False

    @classmethod
    def from_config(cls, model: Any, image_size: int, in_channels: int) -> ModelSpec:
        """From a ``ModelConfig`` and the data it will see (the stem depends on the image size)."""
        return cls(
            depth=model.depth,
            width_multiplier=model.width_multiplier,
            sk_ratio=model.sk_ratio,
            cifar_stem=model.cifar_stem(image_size),
            in_channels=in_channels,
            head_layers=model.head_layers,
            proj_dim=model.proj_dim,
            tf_pooling=model.tf_pooling,
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSpec:
        fields = dataclasses.fields(cls)
        missing = {f.name for f in fields if f.default is dataclasses.MISSING} - set(values)
        if missing:
            raise SimCLRv2Error(f"checkpoint architecture lacks {', '.join(sorted(missing))}: not a simclrv2 model")
        return cls(**{f.name: values[f.name] for f in fields if f.name in values})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        sk = f"-SK{self.sk_ratio:g}" if self.sk_ratio > 0 else ""
        stem = ", CIFAR stem" if self.cifar_stem else ""
        pooling = ", TF pooling" if self.tf_pooling else ""
        return f"ResNet-{self.depth} {self.width_multiplier:g}x{sk}{stem}{pooling}, {self.head_layers}-layer head"

    def build_simclr(self, seed: int | None = None) -> SimCLRModel:
        """The model, its random initialisation drawn from ``seed`` (without touching the global generator)."""
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.build_simclr()
        return build_simclr_model(
            self.depth,
            width_multiplier=self.width_multiplier,
            sk_ratio=self.sk_ratio,
            cifar_stem=self.cifar_stem,
            in_channels=self.in_channels,
            head_layers=self.head_layers,
            proj_dim=self.proj_dim,
            tf_pooling=self.tf_pooling,
        )

    def build_classifier(self, head_layer: int, num_classes: int, seed: int | None = None) -> Classifier:
        """The classifier on head layer ``head_layer`` (0: the encoder output) of this network."""
        return Classifier.from_simclr(self.build_simclr(seed), head_layer, num_classes)

    def model_config(self) -> ModelConfig:
        """The ``[model]`` section that builds this architecture: what a stage that takes its network from a
        checkpoint records in its ``config.toml``."""
        return ModelConfig(depth=self.depth, width_multiplier=self.width_multiplier, sk_ratio=self.sk_ratio,
                           stem="cifar" if self.cifar_stem else "imagenet", head_layers=self.head_layers,
                           proj_dim=self.proj_dim, tf_pooling=self.tf_pooling)

    def check_model_options(self, model: ModelConfig, image_size: int, source: str) -> None:
        """Refuses ``[model]`` options that describe another network than the checkpoint's, rather than
        silently ignoring them. An untouched (default) section is not the user's choice and passes."""
        if model == ModelConfig():
            return
        wanted = ModelSpec.from_config(model, image_size, self.in_channels)
        if wanted != self:
            raise SimCLRv2Error(
                f"the [model] options describe a {wanted.describe()} but {source} is a {self.describe()}; the "
                "network comes from the checkpoint: drop the [model] options or make them match"
            )

    def check_data(self, channels: int, source: str) -> None:
        if channels != self.in_channels:
            raise SimCLRv2Error(
                f"{source} was trained on {self.in_channels}-channel images but the data has {channels} channels; "
                "use data of the same kind or retrain"
            )
