"""The inference commands on runs the stages really wrote (not hand-made checkpoints): predict agrees with the
stage's own test accuracy, embed with the pretraining encoder."""

import csv
import json

import numpy as np
import pytest

import simclrv2
from simclrv2.cli import main
from simclrv2.data import load_dataset
from simclrv2.stages.finetune import finetune
from simclrv2.stages.pretrain import pretrain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_fashion):
    from conftest import quick_config_values

    root = tmp_path_factory.mktemp("inference-stages")
    pretrain(quick_config_values(tiny_fashion, **{"run.knn_every": 0, "pretrain.epochs": 1}), root / "pretrain")
    config = quick_config_values(tiny_fashion, **{"finetune.pretrained": root / "pretrain",
                                                  "finetune.labels": "10/class", "finetune.epochs": 2})
    finetune(config, root / "finetune")
    return root


def test_predict_on_a_finetuned_run_reproduces_its_test_accuracy(runs, tiny_fashion, tmp_path):
    out = tmp_path / "pred.csv"
    assert main(["predict", "--checkpoint", str(runs / "finetune"), "fashion-mnist:test", "--data-dir",
                 str(tiny_fashion), "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    test = load_dataset("fashion-mnist", "test", data_dir=tiny_fashion)
    predicted = [test.classes.index(r["prediction"]) for r in rows]
    top1 = float(np.mean(np.array(predicted) == test.labels.numpy()))
    reported = json.loads((runs / "finetune" / "result.json").read_text())["test"]["top1"]
    assert top1 == pytest.approx(reported, abs=1e-6)


def test_embed_on_a_pretraining_run_gives_its_encoder_features(runs, tiny_fashion, tmp_path):
    assert main(["embed", "--checkpoint", str(runs / "pretrain"), "fashion-mnist:test", "--data-dir",
                 str(tiny_fashion), "--output", str(tmp_path), "--knn", "fashion-mnist:train"]) == 0
    model = simclrv2.load(runs / "pretrain")
    test = load_dataset("fashion-mnist", "test", data_dir=tiny_fashion)
    features = np.load(tmp_path / "features.npy")
    np.testing.assert_allclose(features[:5], model.embed(test.images[:5]).numpy(), atol=1e-5)
    assert len((tmp_path / "knn.csv").read_text().splitlines()) == 1 + len(test)
