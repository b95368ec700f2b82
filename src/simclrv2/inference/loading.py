"""``simclrv2.load``: a run directory, a checkpoint file or an export folder -> a ready :class:`LoadedModel`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from simclrv2.checkpoint import find_checkpoint, load_checkpoint, load_state, network_from
from simclrv2.errors import SimCLRv2Error
from simclrv2.inference.model import LoadedModel
from simclrv2.inference.spec import InferenceSpec
from simclrv2.models.networks import Classifier, SimCLRModel

SPEC_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"


def load(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A trained network in eval mode on ``device``, with its preprocessing.

    ``path``: a run directory (its ``final.pt``, else ``last.pt``), a checkpoint file, or a folder written by
    ``simclrv2 export`` (``model.json`` + ``model.safetensors``; also accepted: either file itself).
    """
    path = Path(path).expanduser()
    if path.is_file() and path.name in (SPEC_FILE, WEIGHTS_FILE):
        path = path.parent
    if not path.exists():
        raise SimCLRv2Error(f"{path} not found: pass a run directory, a checkpoint file or an export folder")
    if path.is_dir() and (path / SPEC_FILE).is_file():
        model = load_export(path)
    else:
        checkpoint = find_checkpoint(path) if path.is_dir() else path
        model = from_checkpoint(load_checkpoint(checkpoint), str(checkpoint))
    return model.to(torch.device(device))


def from_checkpoint(payload: dict, source: str) -> LoadedModel:
    """The network of a checkpoint payload as the stages write it (kind "simclr" or "classifier")."""
    spec = InferenceSpec.from_checkpoint(payload, source)
    _, network = network_from(payload, source)
    return _loaded(network, spec)


def build_model(spec: InferenceSpec) -> LoadedModel:
    """The network a spec describes, freshly initialised (weights are loaded by the caller)."""
    architecture = spec.architecture
    network = (architecture.build_classifier(spec.head_layers, len(spec.classes)) if spec.classes
               else architecture.build_simclr())
    return _loaded(network, spec)


def _loaded(network: SimCLRModel | Classifier, spec: InferenceSpec) -> LoadedModel:
    """The encoder, the spec's head layers and the classifier (if any) of a built network, shared, not copied."""
    if isinstance(network, Classifier):
        return LoadedModel(network.encoder, network.head, network.classifier, spec)
    return LoadedModel(network.encoder, network.head.truncated(spec.head_layers), None, spec)


def load_export(folder: Path) -> LoadedModel:
    from safetensors.torch import load_file

    spec_path, weights = folder / SPEC_FILE, folder / WEIGHTS_FILE
    try:
        spec = InferenceSpec.from_dict(json.loads(spec_path.read_text()), str(spec_path))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SimCLRv2Error(f"{spec_path} is not a valid model description ({exc}); export the model again") from exc
    if not weights.is_file():
        raise SimCLRv2Error(f"{folder} has {SPEC_FILE} but no {WEIGHTS_FILE}; export with --format safetensors")
    model = build_model(spec)
    load_state(model, load_file(weights), str(weights))
    return model
