"""The description of a loaded network as plain data: what ``model.json`` holds beside an export.

A checkpoint stores its architecture, head layer, classes and the side of its training images; the channels
come from the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simclrv2.errors import SimCLRv2Error
from simclrv2.inference.preprocess import Preprocessing
from simclrv2.models.spec import ModelSpec

EXPORT_FORMAT = "simclrv2-export"
EXPORT_VERSION = 1


@dataclass(frozen=True)
class InferenceSpec:
    """A network ready for inference: encoder + the first ``head_layers`` projection-head layers, and a linear
    classifier over ``classes`` when there are any (none: the network gives features)."""

    architecture: ModelSpec
    head_layers: int
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    source: str = ""  # where it came from, for messages

    def __post_init__(self) -> None:
        if not 0 <= self.head_layers <= self.architecture.head_layers:
            raise SimCLRv2Error(f"head layer {self.head_layers} does not exist: choose 0 to "
                                f"{self.architecture.head_layers}")

    @property
    def what(self) -> str:
        return "classifier" if self.classes else "encoder"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_VERSION,
            "what": self.what,
            "architecture": self.architecture.to_dict(),
            "head_layers": self.head_layers,
            "num_classes": len(self.classes),
            "classes": list(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "") -> InferenceSpec:
        if values.get("format") != EXPORT_FORMAT:
            raise SimCLRv2Error(f"{source or 'the model description'} is not a simclrv2 export (no "
                                f"format = {EXPORT_FORMAT!r}); export one with `simclrv2 export`")
        if values.get("format_version") != EXPORT_VERSION:
            raise SimCLRv2Error(f"{source} is export format version {values.get('format_version')}; this "
                                f"simclrv2 reads version {EXPORT_VERSION}: export the model again")
        return cls(ModelSpec.from_dict(values["architecture"]), int(values["head_layers"]),
                   tuple(values.get("classes", ())), Preprocessing.from_dict(values["preprocessing"]), source)

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any], source: str = "") -> InferenceSpec:
        """From a checkpoint a stage wrote: kind "simclr" (encoder + whole head) or "classifier"."""
        kind = payload.get("kind")
        if kind not in ("simclr", "classifier"):
            raise SimCLRv2Error(f"{source} holds no network to run (kind {kind!r}); pass a pretrain, finetune, "
                                "supervised or distill run")
        architecture = ModelSpec.from_dict(payload["architecture"])
        preprocessing = Preprocessing(int(payload["image_size"]), architecture.in_channels)
        if kind == "simclr":
            return cls(architecture, architecture.head_layers, (), preprocessing, source)
        classes = tuple(str(c) for c in payload["classes"])
        return cls(architecture, int(payload["head_layer"]), classes, preprocessing, source)
