"""Evaluation of a trained network on the test split, written to ``result.json``.

- ``linear``: frozen encoder; features are extracted once and a linear classifier is fitted on the cached
  features of the labelled images (``evaluate.labels``), BN in eval mode (SPEC linear evaluation).
- ``knn``: cosine kNN (k, temperature from ``[run]``) with the labelled images as the memory bank.
- ``classifier``: test accuracy of a fine-tuned, supervised or distilled model.
Each gives top-1, per-class accuracy and the confusion matrix.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simclrv2 import dist
from simclrv2.architecture import Architecture, build_classifier, classifier_architecture, load_state
from simclrv2.checkpoint import atomic_write_text, check_run_dir, load_checkpoint, prepare_run_dir
from simclrv2.config import Config, to_toml
from simclrv2.data.subsets import subset_indices
from simclrv2.errors import SimCLRv2Error
from simclrv2.knn import knn_predict
from simclrv2.linear_probe import evaluate_linear_probe, fit_linear_probe
from simclrv2.metrics import classification_report
from simclrv2.runtime import resolve_device, set_threads
from simclrv2.stages.features import classifier_logits, encoder_features
from simclrv2.stages.inputs import labelled_train, load_test, load_train

STAGE = "evaluate"


@dataclass(frozen=True)
class EvaluationResult:
    run_dir: Path
    top1: float
    result: dict[str, Any]


def _encoder_of(payload: dict[str, Any], source: str) -> tuple[Architecture, torch.nn.Module]:
    """The encoder of a pretraining checkpoint, or of a classifier checkpoint (its fine-tuned encoder)."""
    if payload.get("kind") == "classifier":
        architecture, head_layer, num_classes = classifier_architecture(payload)
        model = build_classifier(architecture, head_layer, num_classes)
    else:
        architecture = Architecture.from_dict(payload.get("architecture", {}))
        model = architecture.build_simclr()
    load_state(model, payload["model"], source)
    return architecture, model.encoder


def evaluate(config: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> EvaluationResult:
    """Evaluates ``evaluate.checkpoint`` with ``evaluate.mode``; writes ``result.json`` into ``run_dir``."""
    cfg, run = config.evaluate, config.run
    set_threads(run.threads)
    device = resolve_device(run.device)
    if not cfg.checkpoint:
        raise SimCLRv2Error("nothing to evaluate: set evaluate.checkpoint to a run directory or checkpoint file")
    run_dir = Path(run_dir)
    done = run_dir / "result.json"
    if dist.init_distributed(device.type) and not dist.is_main():
        dist.barrier()  # evaluation is cheap next to training: rank 0 does it, the others wait and read it
        if not done.is_file():
            raise SimCLRv2Error("evaluation failed on rank 0; its message says why")
        result = json.loads(done.read_text())
        return EvaluationResult(run_dir, result["top1"], result)
    try:
        result = _evaluate(config, run_dir, resume, overwrite, device)
    finally:
        dist.barrier()
    return result


def _evaluate(config: Config, run_dir: Path, resume: bool, overwrite: bool, device: torch.device):
    cfg, run = config.evaluate, config.run
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if resume and (run_dir / "result.json").is_file():
        result = json.loads((run_dir / "result.json").read_text())
        return EvaluationResult(run_dir, result["top1"], result)
    payload = load_checkpoint(cfg.checkpoint)
    test = load_test(config.data)
    test_labels = test.require_labels("evaluation")
    batch, precision = run.eval_batch_size, run.precision

    if cfg.mode == "classifier":
        architecture, head_layer, num_classes = classifier_architecture(payload)
        if num_classes != test.num_classes:
            raise SimCLRv2Error(f"the model predicts {num_classes} classes but {test.name} has {test.num_classes}")
        architecture.check_data(test.channels, str(cfg.checkpoint))
        architecture.check_model_options(config.model, test.image_size, str(cfg.checkpoint))
        model = build_classifier(architecture, head_layer, num_classes)
        load_state(model, payload["model"], str(cfg.checkpoint))
        predictions = classifier_logits(model.to(device), test, device, batch, precision).argmax(1)
        extra: dict[str, Any] = {"head_layer": head_layer}
    else:
        architecture, encoder = _encoder_of(payload, str(cfg.checkpoint))
        architecture.check_data(test.channels, str(cfg.checkpoint))
        architecture.check_model_options(config.model, test.image_size, str(cfg.checkpoint))
        encoder = encoder.to(device)
        train = labelled_train(config.data, load_train(config.data))
        indices = subset_indices(train, cfg.labels, run.seed)
        bank = train.subset(indices)
        bank_features = encoder_features(encoder, bank, device, batch, precision, progress=run.progress)
        test_features = encoder_features(encoder, test, device, batch, precision, progress=run.progress)
        if cfg.mode == "linear":
            probe = fit_linear_probe(bank_features, bank.labels, train.num_classes, epochs=cfg.linear_epochs,
                                     weight_decay=cfg.linear_weight_decay, seed=run.seed)
            predictions = evaluate_linear_probe(probe, test_features).argmax(1)
        else:
            predictions = knn_predict(bank_features, bank.labels, test_features, train.num_classes,
                                      k=run.knn_k, temperature=run.knn_temperature)
        extra = {"labels": cfg.labels, "num_labelled": len(indices)}

    result = {"stage": STAGE, "mode": cfg.mode, "checkpoint": str(cfg.checkpoint),
              "architecture": architecture.describe(), **extra,
              **classification_report(predictions.cpu(), test_labels, test.classes)}
    prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    atomic_write_text(run_dir / "config.toml", to_toml(dataclasses.replace(config, model=architecture.model_config())))
    atomic_write_text(run_dir / "result.json", json.dumps(result, indent=1))
    print(f"{cfg.mode} evaluation of {cfg.checkpoint}: test top-1 {result['top1']:.4f} -> {run_dir / 'result.json'}",
          flush=True)
    return EvaluationResult(run_dir, result["top1"], result)
