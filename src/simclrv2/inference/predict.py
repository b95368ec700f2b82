"""``simclrv2 predict``: class probabilities for every image of a folder or split, as CSV or JSON lines."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import torch
from tqdm import tqdm

from simclrv2.atomic import atomic_path
from simclrv2.errors import SimCLRv2Error
from simclrv2.inference.model import LoadedModel
from simclrv2.inference.outputs import output_file
from simclrv2.inference.sources import ImageSource

OUTPUT_KINDS = (".csv", ".jsonl")


def run_model(model: LoadedModel, source: ImageSource, batch_size: int, method: str, **kwargs) -> Iterator[
        tuple[tuple[str, ...], torch.Tensor]]:
    """(ids, outputs) batch by batch: ``method`` is "predict" or "embed"; a progress bar only on a terminal
    (a bar redrawn into a log file leaves thousands of lines)."""
    if batch_size < 1:
        raise SimCLRv2Error(f"--batch-size must be >= 1, got {batch_size}")
    run = getattr(model, method)
    with tqdm(total=len(source), unit="img", desc=method, disable=not sys.stderr.isatty(), leave=False) as bar:
        for ids, images in source.batches(batch_size, model.preprocess):
            yield ids, run(images, batch_size=batch_size, **kwargs)
            bar.update(len(ids))


def prediction_rows(classes: tuple[str, ...], ids: tuple[str, ...], probabilities: torch.Tensor,
                    top_k: int = 0) -> list[dict]:
    """One record per image: its id, the predicted class and its probability, then the probability of each
    class, or only the ``top_k`` most probable classes when ``top_k`` > 0."""
    rows = []
    order = probabilities.argsort(dim=1, descending=True)
    for image, p, ranked in zip(ids, probabilities.tolist(), order.tolist(), strict=True):
        row = {"image": image, "prediction": classes[ranked[0]], "probability": round(p[ranked[0]], 6)}
        if top_k:
            row["top_k"] = [{"class": classes[k], "probability": round(p[k], 6)} for k in ranked[:top_k]]
        else:
            row["probabilities"] = {c: round(q, 6) for c, q in zip(classes, p, strict=True)}
        rows.append(row)
    return rows


def _flat(row: dict) -> dict:
    """A record as one CSV row: ``p_<class>`` columns, or ``class_i`` / ``probability_i`` for the top k."""
    flat = {key: row[key] for key in ("image", "prediction", "probability")}
    for i, entry in enumerate(row.get("top_k", []), start=1):
        flat[f"class_{i}"], flat[f"probability_{i}"] = entry["class"], entry["probability"]
    flat.update({f"p_{c}": q for c, q in row.get("probabilities", {}).items()})
    return flat


def write_predictions(batches: Iterator[list[dict]], output: Path | None, stdout: IO[str] | None = None) -> int:
    """Writes records as CSV (``.csv`` or stdout) or JSON lines (``.jsonl``), batch by batch; returns the count.
    A file appears (or replaces the old one) only once complete."""
    kind = ".csv" if output is None else output.suffix.lower()
    if kind not in OUTPUT_KINDS:
        raise SimCLRv2Error(f"--output {output} must end in .csv or .jsonl")
    if output is None:
        return _write_rows(batches, kind, stdout or sys.stdout)
    with atomic_path(output_file(output)) as tmp, tmp.open("w", newline="") as handle:
        return _write_rows(batches, kind, handle)


def _write_rows(batches: Iterator[list[dict]], kind: str, handle: IO[str]) -> int:
    count, writer = 0, None
    for rows in batches:
        for row in rows:
            if kind == ".jsonl":
                handle.write(json.dumps(row) + "\n")
                continue
            flat = _flat(row)
            if writer is None:
                writer = csv.DictWriter(handle, fieldnames=list(flat))
                writer.writeheader()
            writer.writerow(flat)
        count += len(rows)
    return count


def predict(model: LoadedModel, source: ImageSource, output: Path | None, top_k: int = 0,
            batch_size: int = 256, stdout: IO[str] | None = None, precision: str = "fp32",
            fused_kernels: bool = True) -> int:
    """Predicts every readable image of ``source`` and writes the records (to ``stdout`` without ``output``);
    returns the number of images written."""
    if top_k < 0:
        raise SimCLRv2Error(f"--top-k must be >= 0 (0: every class), got {top_k}")
    if not model.classes:
        raise SimCLRv2Error(f"{model.spec.source} is a pretrained encoder without a classifier: use `simclrv2 embed` "
                            "(with --knn for labels), or pass a fine-tuned, supervised or distilled run")
    top_k = min(top_k, len(model.classes))
    batches = (prediction_rows(model.classes, ids, probabilities, top_k)
               for ids, probabilities in run_model(model, source, batch_size, "predict", precision=precision,
                                                    fused_kernels=fused_kernels))
    return write_predictions(batches, output, stdout)
