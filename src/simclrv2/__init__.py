"""simclrv2: SimCLRv2 (Chen et al., 2020, arXiv 2006.10029) in PyTorch.

The public surface is small: the building blocks people reuse (encoder, loss, optimiser, augmentation) and one
function per stage. Everything else may change between versions.
"""

from __future__ import annotations

from simclrv2.augment import AugmentConfig, simclr_views
from simclrv2.config import Config, load_config
from simclrv2.errors import SimCLRv2Error
from simclrv2.inference import LoadedModel, export_model, load
from simclrv2.losses import distillation_loss, nt_xent_loss
from simclrv2.models import Classifier, ProjectionHead, SimCLRModel, build_simclr_model, resnet
from simclrv2.optim import LARS, lr_at, param_groups, scaled_learning_rate
from simclrv2.stages.distill import distill
from simclrv2.stages.evaluate import evaluate
from simclrv2.stages.finetune import finetune
from simclrv2.stages.pipeline import pipeline
from simclrv2.stages.pretrain import pretrain
from simclrv2.stages.supervised import supervised

__all__ = [
    "LARS",
    "AugmentConfig",
    "Classifier",
    "Config",
    "LoadedModel",
    "ProjectionHead",
    "SimCLRModel",
    "SimCLRv2Error",
    "build_simclr_model",
    "distill",
    "distillation_loss",
    "evaluate",
    "export_model",
    "finetune",
    "load",
    "load_config",
    "lr_at",
    "nt_xent_loss",
    "param_groups",
    "pipeline",
    "pretrain",
    "resnet",
    "scaled_learning_rate",
    "simclr_views",
    "supervised",
]
__version__ = "0.1.0"
