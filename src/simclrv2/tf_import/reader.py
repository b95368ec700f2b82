"""Opening a TensorFlow checkpoint: its variables by name and shape, each tensor read only when asked for.

Two layouts are read, both as the authors released them:

- a TF1 checkpoint (``model.ckpt-N.index`` + ``.data-*``), whose keys are the variable names
  (``base_model/conv2d_3/kernel``);
- a TF2 SavedModel (``saved_model.pb`` + ``variables/``), whose checkpoint is keyed by object paths
  (``model/resnet_model/…/.ATTRIBUTES/VARIABLE_VALUE``); the variables' names come from the object graph
  stored beside them (``_CHECKPOINTABLE_OBJECT_GRAPH``), so nothing of the SavedModel is loaded or run.
  A TF2 training checkpoint (``ckpt-N``) has the same object graph and is read the same way.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simclrv2.errors import SimCLRv2Error

MISSING_TENSORFLOW = "importing TensorFlow checkpoints needs TensorFlow: pip install 'simclrv2[tf]'"
OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_STEP = re.compile(r"-(\d+)$")
NOT_A_CHECKPOINT = ("is not a TensorFlow checkpoint: pass a TF1 checkpoint (the model.ckpt-N prefix, its .index "
                    "file or its folder) or a TF2 SavedModel folder (saved_model.pb and variables/)")


def import_tensorflow() -> Any:
    """TensorFlow, quietly (its C++ start-up lines are not the user's concern), or one line saying how to get it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise SimCLRv2Error(MISSING_TENSORFLOW) from exc
    return tf


@dataclass
class TFCheckpoint:
    """The variables of one checkpoint: ``shapes`` maps each name to its shape; :meth:`read` loads one."""

    source: str  # the checkpoint file prefix that was read
    format: str  # "TF1 checkpoint", "TF2 SavedModel", "TF2 checkpoint" or "TF1 SavedModel" (a hub module)
    shapes: dict[str, tuple[int, ...]]
    keys: dict[str, str] = field(repr=False)  # name -> key in the checkpoint file
    reader: Any = field(repr=False)

    def read(self, name: str) -> np.ndarray:
        """The variable as float32 (bfloat16 or float16 values are widened)."""
        return np.asarray(self.reader.get_tensor(self.keys[name])).astype(np.float32, copy=False)


def open_checkpoint(path: str | Path) -> TFCheckpoint:
    """The checkpoint at ``path``: a TF1 prefix, its ``.index``/``.data`` file, a folder holding one, or a
    SavedModel folder (or the folder above it, as in the authors' ``r50_1x_sk0/saved_model/``)."""
    path = Path(path).expanduser()
    prefix, saved_model = _locate(path)
    tf = import_tensorflow()
    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except Exception as exc:  # tf.errors.*: a truncated, corrupt or foreign file
        raise SimCLRv2Error(f"cannot read {path} as a TensorFlow checkpoint ({type(exc).__name__}); is it whole?"
                            ) from exc
    shapes = {name: tuple(int(d) for d in shape) for name, shape in reader.get_variable_to_shape_map().items()}
    version = "TF2" if OBJECT_GRAPH in shapes else "TF1"  # a TF1 SavedModel (a hub module) is keyed by name
    form = f"{version} {'SavedModel' if saved_model else 'checkpoint'}"
    if version == "TF1":
        return TFCheckpoint(str(prefix), form, shapes, {n: n for n in shapes}, reader)
    keys = _names_from_object_graph(reader.get_tensor(OBJECT_GRAPH), shapes)
    return TFCheckpoint(str(prefix), form, {name: shapes[key] for name, key in keys.items()}, keys, reader)


def _locate(path: Path) -> tuple[Path, bool]:
    """(checkpoint prefix, whether it is a SavedModel's) for what the user passed."""
    if not path.exists() and Path(f"{path}.index").is_file():
        return path, False
    if path.is_file():
        if path.suffix == ".index":
            return path.with_suffix(""), False
        if ".data-" in path.name:
            return path.with_name(path.name.split(".data-")[0]), False
        if path.name in ("saved_model.pb", "checkpoint"):
            return _locate(path.parent)
    elif path.is_dir():
        indexes = sorted(path.glob("*.index"))
        if indexes:
            return _newest(indexes).with_suffix(""), False
        for folder in (path, path / "saved_model", path.parent):
            if (folder / "saved_model.pb").is_file() and (folder / "variables" / "variables.index").is_file():
                return folder / "variables" / "variables", True
    elif not path.parent.exists():
        raise SimCLRv2Error(f"{path} not found")
    raise SimCLRv2Error(f"{path} {NOT_A_CHECKPOINT}")


def _newest(indexes: list[Path]) -> Path:
    """The checkpoint of the highest step (model.ckpt-N) among a folder's, as TensorFlow's latest_checkpoint."""
    def step(index: Path) -> int:
        match = _STEP.search(index.with_suffix("").name)
        return int(match.group(1)) if match else -1

    return max(indexes, key=step)


def _names_from_object_graph(serialized: bytes, shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """{variable name: checkpoint key} from an object-based checkpoint's graph.

    A variable's ``full_name`` is the name it was created with, the same kind of name a TF1 checkpoint uses.
    Optimiser slots keep their object path (it holds ``.OPTIMIZER_SLOT``), so the skip rule can tell them.
    """
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(serialized)
    keys: dict[str, str] = {}
    for node in graph.nodes:
        for attribute in node.attributes:
            key = attribute.checkpoint_key
            if key not in shapes or key == OBJECT_GRAPH:
                continue
            path = key.removesuffix(_VALUE_SUFFIX)
            name = path if ".OPTIMIZER_SLOT" in key or not attribute.full_name else attribute.full_name
            keys[name if name not in keys else path] = key
    return keys
