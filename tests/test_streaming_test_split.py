"""The test split on the streaming path: decoded batch by batch like the training images (never read into memory),
its classes matched to the training classes by name, a class unknown to training refused, and a damaged test
image refused with its name as streamed training refuses one."""

from __future__ import annotations

import pytest
from PIL import Image

import simclrv2.stages.inputs as inputs_module
import streaming_helpers as helpers
from simclrv2.data.streaming import folder_index
from simclrv2.data.streaming.index import with_classes
from simclrv2.errors import SimCLRv2Error, UnknownClassError
from simclrv2.stages.evaluate import evaluate
from simclrv2.stages.supervised import supervised

SIZE = 16  # <= 32 px: "auto" is the pad-4 crop, so streamed training is the in-memory training exactly

pytestmark = pytest.mark.usefixtures("own_cache")


def _write_test(root, classes: tuple[str, ...], per_class: int = 3, seed: int = 1):
    """``root/test`` with ``per_class`` images in each of the named class folders."""
    images = helpers.smooth_images(per_class * len(classes), SIZE, seed)
    for i, pixels in enumerate(images):
        folder = root / "test" / classes[i % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"test{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Four training classes; the test split lacks class1, so its own folder order numbers class2 as 1."""
    root = helpers.write_splits(tmp_path_factory.mktemp("stream-test-split"), helpers.smooth_images(48, SIZE))
    return _write_test(root, ("class0", "class2", "class3"), per_class=4)


@pytest.fixture(scope="module")
def classifier(folder, tmp_path_factory):
    """A supervised classifier trained in memory: what the evaluations here score."""
    run_dir = tmp_path_factory.mktemp("classifier") / "run"
    supervised(_config(folder, **{"data.stream": "memory"}), run_dir)
    return run_dir


def _config(folder, **overrides):
    return helpers.tiny_config(folder, SIZE, {
        "finetune.labels": "6/class", "supervised.batch_size": "8", "supervised.epochs": "2",
        "supervised.min_steps": "0", "evaluate.mode": "classifier", "run.eval_batch_size": "5", **overrides})


def _refuse_test_in_memory(monkeypatch):
    """From here on, a run that reads its test split into memory fails."""
    monkeypatch.setattr(inputs_module, "load_test", lambda data: pytest.fail("the test split was read into memory"))


def test_test_labels_are_the_training_classes_matched_by_name(folder):
    index = folder_index(folder, "test")
    training = ("class3", "class1", "class0", "class2")  # another order, and a class the test split lacks
    renamed = with_classes(index, training)
    expected = [training.index(index.relative(i).split("/")[0]) for i in range(len(index))]
    assert renamed.classes == training and renamed.labels.tolist() == expected
    assert sorted(set(expected)) == [0, 2, 3]


def test_a_test_class_unknown_to_training_is_refused_with_its_name(folder):
    with pytest.raises(SimCLRv2Error, match=r"^\S*test/class2 is a class that the training images do not have; "):
        with_classes(folder_index(folder, "test"), ("class0", "class1", "class3"))


def test_streamed_test_scores_are_the_in_memory_scores(folder, classifier, tmp_path, monkeypatch):
    """The in-memory reader maps the test classes by name too: the same confusion matrix, 12 images in the rows
    of classes 0, 2 and 3 (none in class1's)."""
    memory = evaluate(_config(folder, **{"data.stream": "memory", "evaluate.checkpoint": classifier}),
                      tmp_path / "memory")
    _refuse_test_in_memory(monkeypatch)
    streamed = evaluate(_config(folder, **{"data.stream": "stream", "evaluate.checkpoint": classifier}),
                        tmp_path / "stream")
    assert [sum(row) for row in streamed.test.confusion] == [4, 0, 4, 4]
    assert streamed.test.confusion == memory.test.confusion and streamed.test.top1 == memory.test.top1
    assert streamed.val.confusion == memory.val.confusion


def test_a_streamed_classifier_stage_scores_the_streamed_test_split_as_in_memory(folder, tmp_path, monkeypatch):
    memory = supervised(_config(folder, **{"data.stream": "memory"}), tmp_path / "memory")
    _refuse_test_in_memory(monkeypatch)
    streamed = supervised(_config(folder, **{"data.stream": "stream"}), tmp_path / "stream")
    assert sum(map(sum, streamed.test.confusion)) == 12
    assert streamed.test.confusion == memory.test.confusion and streamed.test.top1 == memory.test.top1


@pytest.mark.parametrize("path", ["memory", "stream"])
def test_a_test_class_unknown_to_training_is_refused_by_evaluation(path, classifier, tmp_path):
    """In memory as streamed: refused with its name, never skipped as "no test evaluation"."""
    root = helpers.write_splits(tmp_path / "extra", helpers.smooth_images(48, SIZE))
    _write_test(root, ("class0", "class4"))
    with pytest.raises(UnknownClassError, match=r"test/class4 is a class that .* not have"):
        evaluate(_config(root, **{"data.stream": path, "evaluate.checkpoint": classifier}), tmp_path / "run")


@pytest.mark.parametrize("path", ["memory", "stream"])
def test_a_test_class_unknown_to_training_is_refused_before_a_stage_trains(path, tmp_path):
    """The refusal comes before the first step, so hours of training cannot end in it."""
    root = helpers.write_splits(tmp_path / "extra", helpers.smooth_images(48, SIZE))
    _write_test(root, ("class0", "class4"))
    with pytest.raises(UnknownClassError, match=r"^\S*test/class4 is a class that the training images do not have"):
        supervised(_config(root, **{"data.stream": path}), tmp_path / "run")
    assert not list((tmp_path / "run").rglob("*.pt")) and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_damaged_test_image_is_refused_with_its_name(classifier, tmp_path):
    """Streamed training refuses a damaged image (its step's batch cannot be made without it); the test split
    streamed follows that rule rather than scoring on fewer images than the folder holds."""
    root = helpers.write_splits(tmp_path / "bad", helpers.smooth_images(48, SIZE))
    _write_test(root, ("class0", "class1"))
    damaged = root / "test" / "class1" / "test001.png"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(SimCLRv2Error, match=r"^cannot (read|decode) image \S*test/class1/test001\.png .*; remove or"):
        evaluate(_config(root, **{"data.stream": "stream", "evaluate.checkpoint": classifier}), tmp_path / "run")
