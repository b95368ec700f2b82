"""Writing a :class:`LoadedModel` for use outside this package: safetensors + ``model.json``, ONNX, torch.export.

Every format takes the prepared input described in ``model.json`` ("preprocessing"): float32 NCHW images in
[0, 1] of the training size, no mean/std; the batch dimension is dynamic.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from simclrv2.atomic import atomic_write_text
from simclrv2.errors import SimCLRv2Error
from simclrv2.inference.loading import SPEC_FILE, WEIGHTS_FILE
from simclrv2.inference.model import LoadedModel
from simclrv2.inference.outputs import output_folder

FORMATS = ("safetensors", "onnx", "pt2")
ONNX_FILE = "model.onnx"
PT2_FILE = "model.pt2"
ONNX_OPSET = 18
INPUT_NAME = "images"
_EXAMPLE_BATCH = 2  # tracing with 1 would fix the batch size at 1
_ONNX_SINGLE_FILE_BYTES = 1 << 30  # ONNX (protobuf) files stop at 2 GB: larger weights go to model.onnx.data


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if not formats or unknown:
        raise SimCLRv2Error(f"unknown export format {', '.join(unknown) or repr(text)}; choose from "
                            f"{', '.join(FORMATS)} (comma-separated)")
    return formats


def export_model(model: LoadedModel, output: str | Path, formats: tuple[str, ...] = FORMATS) -> dict[str, Path]:
    """Writes ``model.json`` and each format into ``output``; returns {format: file}."""
    output = output_folder(Path(output))
    if model.device.type != "cpu":  # export a CPU copy; the caller's model stays where it is
        model = copy.deepcopy(model).cpu()
    if not all(p.is_contiguous() for p in model.parameters()):  # channels_last, as predict lays it out
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)  # what torch.export saves whole
    model.eval()
    example = torch.rand(_EXAMPLE_BATCH, model.preprocess.channels, model.preprocess.image_size,
                         model.preprocess.image_size, generator=torch.Generator().manual_seed(0))
    written: dict[str, Path] = {}
    for name in formats:
        writer = {"safetensors": _safetensors, "onnx": _onnx, "pt2": _pt2}[name]
        written[name] = writer(model, example, output)
    description = model.spec.to_dict()
    description["input"] = {"name": INPUT_NAME, "shape": ["batch", *example.shape[1:]], "dtype": "float32"}
    with torch.no_grad():
        width = model(example).shape[1]
    description["output"] = {"name": model_output_name(model), "shape": ["batch", width]}
    description["files"] = {name: path.name for name, path in written.items()}
    if "onnx" in written:
        description["onnx_opset"] = ONNX_OPSET
    atomic_write_text(output / SPEC_FILE, json.dumps(description, indent=1) + "\n")
    return written


def model_output_name(model: LoadedModel) -> str:
    return "logits" if model.classifier is not None else "features"


def _safetensors(model: LoadedModel, example: torch.Tensor, output: Path) -> Path:
    from safetensors.torch import save_file

    path = output / WEIGHTS_FILE
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    os.chmod(path, 0o644)  # like every run file: meant to be shared and read
    return path


def _onnx(model: LoadedModel, example: torch.Tensor, output: Path) -> Path:
    try:
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError as exc:
        raise SimCLRv2Error("ONNX export needs the onnx extra: pip install 'simclrv2[onnx]' "
                            "(onnx, onnxscript, onnxruntime)") from exc
    path = output / ONNX_FILE
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with _quiet_exporter():
        torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME],
                          output_names=[model_output_name(model)], dynamic_shapes=({0: torch.export.Dim("batch")},),
                          opset_version=ONNX_OPSET, dynamo=True, verbose=False,
                          external_data=weight_bytes > _ONNX_SINGLE_FILE_BYTES)
    return path


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's deprecation notes and "torchvision is not installed" log lines are not the user's concern."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _pt2(model: LoadedModel, example: torch.Tensor, output: Path) -> Path:
    """torch.export (TorchScript is deprecated): ``torch.export.load(path).module()`` runs it, no simclrv2 needed."""
    path = output / PT2_FILE
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return path
