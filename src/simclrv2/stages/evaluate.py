"""Evaluation of a trained network, on the validation split and then on the test split, into ``result.json``.

- ``linear``: frozen encoder; features are extracted once and a linear classifier is fitted on the cached
  features of labelled images (``evaluate.labels``, outside validation), BN in eval mode (docs/recipe.md#linear-probe).
- ``knn``: cosine kNN (k, temperature from ``[run]``) with the labelled images as the memory bank.
- ``classifier``: accuracy of a fine-tuned, supervised or distilled model.
Each gives top-1, per-class accuracy and the confusion matrix on both splits.

The images are in memory or streamed, as ``data.stream`` chooses; streamed, every set (the labelled subset, the
validation split) is decoded batch by batch with the evaluation centre crop, so only features and logits are held.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from simclrv2 import dist
from simclrv2.checkpoint import classifier_from, encoder_from, load_checkpoint
from simclrv2.config import Config
from simclrv2.data.guard import final_evaluation
from simclrv2.errors import SimCLRv2Error
from simclrv2.eval.features import Images, classifier_logits, encoder_features
from simclrv2.eval.knn import knn_predict
from simclrv2.eval.linear_probe import evaluate_linear_probe, fit_linear_probe
from simclrv2.logs import get_logger
from simclrv2.models.spec import ModelSpec
from simclrv2.results import RESULT_FILE, ClassificationScores, StageResult
from simclrv2.stages.inputs import data_for_network, seals_test_split, stage_data, test_split_for
from simclrv2.stages.session import Session, open_session

STAGE = "evaluate"
Predict = Callable[[Images], torch.Tensor]  # dataset (in memory or streamed) -> (N,) predicted classes


@seals_test_split
def evaluate(config: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> StageResult:
    """Evaluates ``evaluate.checkpoint`` with ``evaluate.mode``; writes ``result.json`` into ``run_dir``."""
    if not config.evaluate.checkpoint:
        raise SimCLRv2Error("nothing to evaluate: set evaluate.checkpoint to a run directory or checkpoint file")
    session = open_session(STAGE, config, run_dir, resume=resume, overwrite=overwrite)
    if session.finished:
        return StageResult.read(session.run_dir)
    if not dist.is_main():
        dist.barrier()  # evaluation is cheap next to training: rank 0 does it, the others wait and read it
        if not (session.run_dir / RESULT_FILE).is_file():
            raise SimCLRv2Error("evaluation failed on rank 0; its message says why")
        return StageResult.read(session.run_dir)
    try:
        return _evaluate(config, session)
    finally:
        dist.barrier()


def _evaluate(config: Config, session: Session) -> StageResult:
    cfg, run, device, run_dir = config.evaluate, config.run, session.device, session.run_dir
    payload = load_checkpoint(cfg.checkpoint)
    spec = ModelSpec.from_dict(payload.get("architecture", {}))
    data_config = data_for_network(config.data, spec.in_channels, payload["image_size"])
    data, stream = stage_data(data_config)
    labelled = data.labelled
    labelled.require_labels("evaluation")
    if cfg.mode == "classifier":
        spec, model = classifier_from(payload, str(cfg.checkpoint))
        if payload["num_classes"] != labelled.num_classes:
            raise SimCLRv2Error(f"the model predicts {payload['num_classes']} classes but {labelled.name} has "
                                f"{labelled.num_classes}")
        model = model.to(device)

        def predict(dataset: Images) -> torch.Tensor:
            return classifier_logits(model, dataset, device, run.eval_batch_size, run.precision).argmax(1)

        details = {"head_layer": int(payload["head_layer"])}
    else:
        spec, encoder = encoder_from(payload, str(cfg.checkpoint))
        predict, details = _feature_classifier(config, encoder.to(device), data, device)
    spec.check_data(labelled.channels, str(cfg.checkpoint))
    spec.check_model_options(config.model, labelled.image_size, str(cfg.checkpoint))
    val = data.val
    val_scores = _scores(predict, val) if val is not None else None
    with final_evaluation():
        # read once, at the end: nothing above depends on it
        test = test_split_for(data_config, stream, labelled.classes)
        test_scores = _scores(predict, test) if test is not None else None
    result = StageResult(stage=cfg.mode if cfg.mode != "classifier" else STAGE, run_dir=str(run_dir),
                         checkpoint=str(cfg.checkpoint), val=val_scores, test=test_scores,
                         details={"mode": cfg.mode, "architecture": spec.describe(), **details})
    session.create(dataclasses.replace(config, model=spec.model_config()))
    result.write(run_dir)
    shown = ", ".join(f"{name} top-1 {s.top1:.4f}" for name, s in (("validation", val_scores), ("test", test_scores))
                      if s is not None)
    get_logger().info(f"{cfg.mode} evaluation of {cfg.checkpoint}: {shown} -> {run_dir / 'result.json'}")
    return result


def _feature_classifier(config: Config, encoder: torch.nn.Module, data, device: torch.device
                        ) -> tuple[Predict, dict]:
    """A linear probe or kNN on frozen encoder features of the labelled subset ``evaluate.labels``."""
    cfg, run = config.evaluate, config.run
    indices = data.labelled_subset(cfg.labels, run.seed)
    bank = data.labelled.subset(indices)

    def features(dataset: Images) -> torch.Tensor:
        return encoder_features(encoder, dataset, device, run.eval_batch_size, run.precision)

    bank_features = features(bank)
    num_classes = data.labelled.num_classes
    if cfg.mode == "linear":
        probe = fit_linear_probe(bank_features, bank.labels, num_classes, epochs=cfg.linear_epochs,
                                 weight_decay=cfg.linear_weight_decay, seed=run.seed)

        def predict(dataset: Images) -> torch.Tensor:
            return evaluate_linear_probe(probe, features(dataset)).argmax(1)
    else:
        def predict(dataset: Images) -> torch.Tensor:
            return knn_predict(bank_features, bank.labels, features(dataset), num_classes, k=run.knn_k,
                               temperature=run.knn_temperature)
    return predict, {"labels": cfg.labels, "num_labelled": len(indices)}


def _scores(predict: Predict, dataset: Images) -> ClassificationScores:
    return ClassificationScores.from_predictions(predict(dataset).cpu(), dataset.labels, dataset.classes)
