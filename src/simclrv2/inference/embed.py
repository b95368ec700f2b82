"""``simclrv2 embed``: features of every image as ``features.npy`` + ``index.txt``, and optionally labels from
a cosine kNN vote over the features of labelled images (docs/recipe.md#knn-monitor, no training)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from simclrv2.atomic import atomic_write_text
from simclrv2.data import ImageDataset
from simclrv2.errors import SimCLRv2Error
from simclrv2.eval.knn import knn_predict
from simclrv2.inference.model import LoadedModel
from simclrv2.inference.outputs import output_folder
from simclrv2.inference.predict import run_model
from simclrv2.inference.sources import ImageSource
from simclrv2.runtime import resolve_precision

FEATURES_FILE = "features.npy"
INDEX_FILE = "index.txt"
KNN_FILE = "knn.csv"


@dataclass(frozen=True)
class KnnOptions:
    labelled: ImageDataset
    k: int = 200
    temperature: float = 0.1


def features_of(model: LoadedModel, source: ImageSource, layer: int, normalize: bool,
                batch_size: int, precision: str = "fp32", fused_kernels: bool = True
                ) -> tuple[tuple[str, ...], torch.Tensor]:
    """(ids, (N, D) float32 features) of every readable image of ``source``, in its order."""
    ids, outputs = [], []
    for batch_ids, features in run_model(model, source, batch_size, "embed", layer=layer, normalize=normalize,
                                           precision=precision, fused_kernels=fused_kernels):
        ids += batch_ids
        outputs.append(features)
    return tuple(ids), torch.cat(outputs)


def embed(model: LoadedModel, source: ImageSource, output: Path, layer: int = 0, normalize: bool = False,
          batch_size: int = 256, knn: KnnOptions | None = None, precision: str = "fp32",
          fused_kernels: bool = True) -> dict[str, Path]:
    """Writes ``features.npy``, ``index.txt`` (one id per line, in row order; unreadable images are skipped),
    ``embedding.json`` and, with ``knn``, ``knn.csv`` (image, predicted class); returns the files written."""
    if output.exists() and not output.is_dir():
        raise SimCLRv2Error(f"--output {output} is a file; choose a folder")
    ids, features = features_of(model, source, layer, normalize, batch_size, precision, fused_kernels)
    output_folder(output)
    written = {"features": output / FEATURES_FILE, "index": output / INDEX_FILE}
    np.save(written["features"], features.numpy())
    atomic_write_text(written["index"], "".join(f"{i}\n" for i in ids))
    about = {"model": model.spec.source, "images": source.name, "layer": layer, "normalize": normalize,
             "precision": resolve_precision(precision, model.device) if precision == "auto" else precision,
             "shape": list(features.shape)}
    if knn is not None:
        written["knn"] = output / KNN_FILE
        about["knn"] = _write_knn(model, ids, features, layer, normalize, batch_size, precision, fused_kernels,
                                  knn, written["knn"])
    atomic_write_text(output / "embedding.json", json.dumps(about, indent=1) + "\n")
    written["about"] = output / "embedding.json"
    return written


def _write_knn(model: LoadedModel, ids: tuple[str, ...], features: torch.Tensor, layer: int, normalize: bool,
               batch_size: int, precision: str, fused_kernels: bool, knn: KnnOptions, path: Path) -> dict:
    """The bank's features computed as the images' were: same layer, precision and kernels."""
    bank = ImageSource(knn.labelled.name, knn.labelled.ids, dataset=knn.labelled)
    _, bank_features = features_of(model, bank, layer, normalize, batch_size, precision, fused_kernels)
    labels = knn_predict(bank_features, knn.labelled.require_labels("kNN labelling"), features,
                         knn.labelled.num_classes, k=knn.k, temperature=knn.temperature)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "prediction"])
        writer.writerows((image, knn.labelled.classes[k]) for image, k in zip(ids, labels.tolist(), strict=True))
    return {"labelled": knn.labelled.name, "bank_size": len(knn.labelled), "k": knn.k,
            "temperature": knn.temperature}
