"""The test split is read only in a stage's final evaluation: the guard at the reader (data/guard.py), and every
stage run under it with the reader recorded (the pipeline's run is checked in test_pipeline.py)."""

import pytest

from simclrv2.data import guard, load_dataset
from simclrv2.data.guard import SealedSplitError
from simclrv2.stages import inputs
from simclrv2.stages.distill import distill
from simclrv2.stages.evaluate import evaluate
from simclrv2.stages.finetune import finetune
from simclrv2.stages.pretrain import pretrain
from simclrv2.stages.supervised import supervised


def test_a_sealed_split_reads_only_inside_the_final_evaluation_and_only_once(tiny_fashion):
    def read(split):
        return load_dataset("fashion-mnist", split, data_dir=tiny_fashion)

    with guard.sealed("test", "finetune"):
        with pytest.raises(SealedSplitError, match="finetune read the test split fashion-mnist/test before its final"):
            read("test")
        assert len(read("train")) == 400  # other splits read freely
        with guard.final_evaluation():
            assert len(read("test")) == 200
        with pytest.raises(SealedSplitError, match="before its final evaluation"):
            read("test")  # closed again after it
        with pytest.raises(SealedSplitError, match="opened its final evaluation twice"), guard.final_evaluation():
            pass
    assert len(read("test")) == 200  # outside any stage (inference, a notebook) every split reads


def test_the_streaming_index_refuses_a_sealed_split(tmp_path):
    from simclrv2.data.streaming.index import folder_index
    from streaming_helpers import smooth_images, write_folder

    write_folder(tmp_path / "test", smooth_images(2, 8), classes=2)
    with guard.sealed("test", "pretrain"), pytest.raises(SealedSplitError, match="folder/test"):
        folder_index(tmp_path, "test", cache=tmp_path / "cache")
    assert len(folder_index(tmp_path, "test", cache=tmp_path / "cache")) == 2


def test_a_stage_that_reads_its_test_split_early_fails_before_training(tmp_path, quick_config, monkeypatch):
    """A read on a path no stage passes anything down to (here: inside the training-data loader) is caught, and
    load_test does not mistake it for a dataset without a test split."""
    real = inputs.load_train
    monkeypatch.setattr(inputs, "load_train", lambda data: inputs.load_test(data) or real(data))
    with pytest.raises(SealedSplitError, match="supervised read the test split fashion-mnist/test before"):
        supervised(quick_config(**{"finetune.labels": "10%"}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_training_on_the_test_split_is_refused(tmp_path, quick_config):
    with pytest.raises(SealedSplitError, match="data.train_split must differ from data.test_split"):
        pretrain(quick_config(**{"data.train_split": "test"}), tmp_path / "run")


# Each stage reads the first 200 training images only: what is under test is where the reads happen, not learning.
LIMIT = {"data.train_limit": 200}


def _run_pretrain(quick_config, tmp_path, pretrained, finetuned):
    pretrain(quick_config(**LIMIT, **{"run.knn_every": 0, "pretrain.epochs": 1}), tmp_path / "run")


def _run_finetune(quick_config, tmp_path, pretrained, finetuned):
    finetune(quick_config(**LIMIT, **{"finetune.pretrained": pretrained, "finetune.labels": "10%",
                                      "finetune.epochs": 1}), tmp_path / "run")


def _run_supervised(quick_config, tmp_path, pretrained, finetuned):
    supervised(quick_config(**LIMIT, **{"finetune.labels": "10%", "supervised.epochs": 1}), tmp_path / "run")


def _run_distill(quick_config, tmp_path, pretrained, finetuned):
    distill(quick_config(**LIMIT, **{"distill.teacher": finetuned[0]}), tmp_path / "run")


def _evaluation(mode):
    def run(quick_config, tmp_path, pretrained, finetuned):
        checkpoint = finetuned[0] if mode == "classifier" else pretrained
        evaluate(quick_config(**LIMIT, **{"evaluate.mode": mode, "evaluate.checkpoint": checkpoint,
                                          "evaluate.labels": "10%", "evaluate.linear_epochs": 2}), tmp_path / "run")
    return run


@pytest.mark.parametrize("run_stage", [_run_pretrain, _run_finetune, _run_supervised, _run_distill,
                                       _evaluation("linear"), _evaluation("knn"), _evaluation("classifier")],
                         ids=["pretrain", "finetune", "supervised", "distill", "evaluate-linear", "evaluate-knn",
                              "evaluate-classifier"])
def test_each_stage_reads_its_test_split_once_inside_its_final_evaluation(run_stage, quick_config, tmp_path,
                                                                          pretrained, finetuned, monkeypatch):
    from conftest import assert_test_split_read_only_in_final_evaluations, record_split_reads

    reads = record_split_reads(monkeypatch)
    run_stage(quick_config, tmp_path, pretrained, finetuned)
    assert_test_split_read_only_in_final_evaluations(reads, evaluations=1)
