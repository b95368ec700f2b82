"""The inference commands on runs the stages really wrote (not hand-made checkpoints): predict agrees with the
stage's own test accuracy, embed with the pretraining encoder. The runs are the session's shared ones (conftest.py)."""

import csv
import json

import numpy as np
import pytest

import simclrv2
from simclrv2.cli import main
from simclrv2.data import load_dataset


def test_predict_on_a_finetuned_run_reproduces_its_test_accuracy(finetuned, tiny_fashion, tmp_path):
    out = tmp_path / "pred.csv"
    assert main(["predict", "--checkpoint", str(finetuned[0]), "fashion-mnist:test", "--data-dir",
                 str(tiny_fashion), "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    test = load_dataset("fashion-mnist", "test", data_dir=tiny_fashion)
    predicted = [test.classes.index(r["prediction"]) for r in rows]
    top1 = float(np.mean(np.array(predicted) == test.labels.numpy()))
    reported = json.loads((finetuned[0] / "result.json").read_text())["test"]["top1"]
    assert top1 == pytest.approx(reported, abs=1e-6)


def test_embed_on_a_pretraining_run_gives_its_encoder_features(pretrained, tiny_fashion, tmp_path):
    assert main(["embed", "--checkpoint", str(pretrained), "fashion-mnist:test", "--data-dir",
                 str(tiny_fashion), "--output", str(tmp_path), "--knn", "fashion-mnist:train"]) == 0
    model = simclrv2.load(pretrained)
    test = load_dataset("fashion-mnist", "test", data_dir=tiny_fashion)
    features = np.load(tmp_path / "features.npy")
    np.testing.assert_allclose(features[:5], model.embed(test.images[:5]).numpy(), atol=1e-5)
    assert len((tmp_path / "knn.csv").read_text().splitlines()) == 1 + len(test)
