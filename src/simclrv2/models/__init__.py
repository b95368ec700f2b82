"""Encoders (ResNet family with width, Selective Kernels and stems), projection head and composed networks."""

from __future__ import annotations

from simclrv2.models.head import ProjectionHead
from simclrv2.models.networks import Classifier, SimCLRModel, build_simclr_model, count_parameters
from simclrv2.models.resnet import ARCHITECTURES, ResNet, resnet
from simclrv2.models.selective_kernel import AvgPoolShortcut, SelectiveKernelConv

__all__ = [
    "ARCHITECTURES",
    "AvgPoolShortcut",
    "Classifier",
    "ProjectionHead",
    "ResNet",
    "SelectiveKernelConv",
    "SimCLRModel",
    "build_simclr_model",
    "count_parameters",
    "resnet",
]
