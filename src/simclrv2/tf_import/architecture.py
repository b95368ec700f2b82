"""Recognising the network a checkpoint holds from its variables' shapes, and our layers in TensorFlow's order.

A TF checkpoint does not say which network it is; its shapes do. The candidates are our own ResNet family
(depth, width, Selective Kernels, stem), built on the meta device, and a candidate is the network only when
every convolution and batch norm has the checkpoint's shape, in the checkpoint's order. So the mapping from
their variables to our layers is checked whole before any value is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from simclrv2.errors import SimCLRv2Error
from simclrv2.models.resnet import ARCHITECTURES, BasicBlock, ResNet, resnet

RECOMMENDED_SK_RATIO = 0.0625  # the authors' recommended --sk_ratio (run.py); narrow networks' gates hide it
_GATE_FLOOR = 32


@dataclass(frozen=True)
class Encoder:
    """What the shapes say about the encoder."""

    depth: int
    width_multiplier: float
    sk_ratio: float
    cifar_stem: bool
    in_channels: int
    feature_dim: int


def tf_creation_order(encoder: ResNet) -> tuple[list[str], list[str]]:
    """(convs, norms): the names of the encoder's Conv2d and BatchNorm2d layers in the order the authors' code
    creates their variables: the stem, then block by block the projection shortcut before the residual branch
    (their blocks build the shortcut first), the SK gate's layers in our module order."""
    convs: list[str] = []
    norms: list[str] = []
    parts: list[tuple[str, nn.Module]] = [("stem", encoder.stem)]
    for s, stage in enumerate(encoder.stages):
        for b, block in enumerate(stage):
            parts += [(f"stages.{s}.{b}.shortcut", block.shortcut), (f"stages.{s}.{b}.residual", block.residual)]
    for prefix, part in parts:
        for name, module in part.named_modules(prefix=prefix):
            if isinstance(module, nn.Conv2d):
                convs.append(name)
            elif isinstance(module, nn.BatchNorm2d):
                norms.append(name)
    return convs, norms


def torch_conv_shape(tf_shape: Sequence[int]) -> tuple[int, ...]:
    """A TF conv kernel (height, width, in, out) as PyTorch's (out, in, height, width)."""
    if len(tf_shape) != 4:
        return tuple(tf_shape)
    height, width, in_channels, out_channels = tf_shape
    return out_channels, in_channels, height, width


def recognise_encoder(conv_shapes: list[tuple[int, ...]], norm_sizes: list[int], source: str) -> Encoder:
    """The ResNet whose convolutions (PyTorch shapes, TF creation order) and BN widths these are."""
    shapes = [tuple(s) for s in conv_shapes]
    if not shapes or len(shapes[0]) != 4:
        raise SimCLRv2Error(f"{source} has no convolution of a ResNet encoder: not a SimCLR checkpoint")
    in_channels = shapes[0][1]
    sk_ratio = _sk_ratio(shapes)
    for cifar_stem in (False, True):
        width = _width(shapes, sk_ratio > 0, cifar_stem)
        if width is None:
            continue
        for depth, (block, _) in ARCHITECTURES.items():
            if sk_ratio > 0 and block is BasicBlock:
                continue  # the authors' basic block has no SK convolution; ours does, so they never match
            with torch.device("meta"):
                encoder = resnet(depth, width, sk_ratio, cifar_stem, in_channels, tf_pooling=True)
            if _layer_shapes(encoder) == (shapes, list(norm_sizes)):
                return Encoder(depth, width, sk_ratio, cifar_stem, in_channels, encoder.feature_dim)
    first = "×".join(str(d) for d in shapes[0][2:])
    raise SimCLRv2Error(
        f"the encoder in {source} ({len(shapes)} convolutions, the first {first} from {in_channels} to "
        f"{shapes[0][0]} channels, {len(norm_sizes)} batch norms) is not a SimCLR ResNet: none of depths "
        f"{', '.join(str(d) for d in ARCHITECTURES)}, with or without Selective Kernels, has these layers"
    )


def _layer_shapes(encoder: ResNet) -> tuple[list[tuple[int, ...]], list[int]]:
    convs, norms = tf_creation_order(encoder)
    return ([tuple(encoder.get_submodule(c).weight.shape) for c in convs],
            [encoder.get_submodule(n).num_features for n in norms])


def _width(shapes: list[tuple[int, ...]], sk: bool, cifar_stem: bool) -> float | None:
    """The width multiplier the stem implies: 64·w channels out of it (the SK stem: 32·w, 32·w, then 64·w)."""
    kernel = shapes[0][2:]
    if cifar_stem or not sk:
        expected = (3, 3) if cifar_stem else (7, 7)
        return shapes[0][0] / 64 if kernel == expected else None
    if len(shapes) < 3 or any(s[2:] != (3, 3) for s in shapes[:3]):
        return None
    return shapes[2][0] / 64


def _sk_ratio(shapes: list[tuple[int, ...]]) -> float:
    """0 without SK; else the gate width over the stream width, read off the widest gate above the floor.

    An SK conv is a 3×3 conv to 2C channels followed by the gate's 1×1 conv from C to max(C·ratio, 32).
    When every gate sits at the floor (narrow networks), any ratio up to 32/C builds the same network and the
    paper's 0.0625 is recorded.
    """
    gates = [(b[1], b[0]) for a, b in zip(shapes, shapes[1:], strict=False)
             if a[2:] == (3, 3) and b[2:] == (1, 1) and a[0] == 2 * b[1]]
    if not gates:
        return 0.0
    above = [(channels, hidden) for channels, hidden in gates if hidden > _GATE_FLOOR]
    if not above:
        return RECOMMENDED_SK_RATIO
    channels, hidden = max(above)
    return hidden / channels


def recognise_head(kernels: dict[int, tuple[int, ...]], feature_dim: int, source: str) -> tuple[int, int]:
    """(layers, output width) of the projection head from its dense kernels (TF shape: in, out) by layer."""
    if sorted(kernels) != list(range(len(kernels))):
        raise SimCLRv2Error(f"the projection head in {source} has layers {sorted(kernels)}, not 0…k: not SimCLRv2's")
    width = feature_dim
    for j in range(len(kernels)):
        in_dim, out_dim = kernels[j]
        last = j == len(kernels) - 1
        if in_dim != width or (not last and out_dim != feature_dim):
            raise SimCLRv2Error(
                f"projection-head layer nl_{j} in {source} maps {in_dim} to {out_dim} features, but SimCLRv2's "
                f"head maps the encoder's {feature_dim} features through {feature_dim}-wide hidden layers"
            )
        width = out_dim
    return len(kernels), width
