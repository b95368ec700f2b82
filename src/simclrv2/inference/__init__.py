"""Using a trained network: ``simclrv2.load`` a run or an export, then ``predict`` classes or ``embed`` images;
``export`` writes it as safetensors + JSON, ONNX and torch.export."""

from __future__ import annotations

from simclrv2.inference.export import FORMATS, export_model
from simclrv2.inference.loading import load
from simclrv2.inference.model import LoadedModel
from simclrv2.inference.preprocess import Preprocessing
from simclrv2.inference.spec import InferenceSpec

__all__ = ["FORMATS", "LoadedModel", "InferenceSpec", "Preprocessing", "export_model", "load"]
