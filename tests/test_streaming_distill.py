"""Distillation on the streaming path: the in-memory batches for the same seed (exactly for the pad-4 crop, up to
resampling for the random resized crop cut at decode time), the teacher's targets on each step's own views, the
labelled subset of ``alpha < 1`` chosen by id, exact resume after a signal mid-epoch, damaged images refused."""

from __future__ import annotations

import pytest
import torch

import simclrv2.stages.classify as classify_module
import simclrv2.stages.distill as distill_module
import streaming_helpers as helpers
from simclrv2.checkpoint import read_classifier
from simclrv2.errors import SimCLRv2Error
from simclrv2.stages.distill import distill
from simclrv2.stages.supervised import supervised

SIZE = 16  # <= 32 px: "auto" is the pad-4 crop
SUBSET = "labelled_subset.txt"

pytestmark = pytest.mark.usefixtures("own_cache")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return helpers.write_splits(tmp_path_factory.mktemp("stream-distill"), helpers.smooth_images(48, SIZE),
                                helpers.smooth_images(8, SIZE, seed=1))


@pytest.fixture(scope="module")
def teacher(folder, tmp_path_factory):
    """A supervised classifier trained in memory: the teacher of every run here."""
    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    supervised(_config(folder, None, **{"data.stream": "memory"}), run_dir)
    return run_dir


def _config(folder, teacher, **overrides):
    return helpers.tiny_config(folder, SIZE, {
        "finetune.labels": "6/class", "supervised.batch_size": "8", "supervised.epochs": "2",
        "supervised.min_steps": "0", "distill.teacher": teacher or "", "distill.student_init": "scratch",
        "distill.alpha": "0.5", "distill.batch_size": "8", "distill.epochs": "2", "distill.min_steps": "0",
        "run.log_every": "1", **overrides})


def _ids(run_dir) -> list[str]:
    return [line for line in (run_dir / SUBSET).read_text().splitlines() if not line.startswith("#")]


def test_streamed_distillation_with_the_pad_crop_is_the_in_memory_run(folder, teacher, tmp_path):
    """The decoded squares are the in-memory images: the same teacher targets, losses, weights and scores, and
    the same labelled subset for the (1 − alpha) term."""
    memory = distill(_config(folder, teacher, **{"data.stream": "memory"}), tmp_path / "memory")
    streamed = distill(_config(folder, teacher, **{"data.stream": "stream"}), tmp_path / "stream")
    assert len(helpers.losses(tmp_path / "stream")) == 12  # every training image, validation too: 6 steps of 8, twice
    assert helpers.losses(tmp_path / "stream") == pytest.approx(helpers.losses(tmp_path / "memory"), abs=1e-6)
    a, b = helpers.final_weights(tmp_path / "memory"), helpers.final_weights(tmp_path / "stream")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert streamed.val.top1 == memory.val.top1 and streamed.test.top1 == memory.test.top1
    assert len(_ids(tmp_path / "stream")) == 24 and _ids(tmp_path / "stream") == _ids(tmp_path / "memory")


def test_the_labelled_subset_of_a_list_file_is_found_by_id_in_the_stream(folder, teacher, tmp_path):
    listed = ["class1/img0005.png", "class2/img0010.png", "class3/img0047.png", "class0/img0020.png"]
    (tmp_path / "ids.txt").write_text("\n".join(listed) + "\n")
    config = _config(folder, teacher, **{"data.stream": "stream", "finetune.labels": str(tmp_path / "ids.txt")})
    distill(config, tmp_path / "run")
    assert _ids(tmp_path / "run") == sorted(listed)


def test_streamed_random_resized_crops_are_the_in_memory_views_for_the_same_seed(folder, teacher, tmp_path,
                                                                                 monkeypatch):
    resized = {"distill.crop": "resized"}
    memory = helpers.classifier_views(distill, _config(folder, teacher, **{"data.stream": "memory", **resized}),
                                      tmp_path / "memory", monkeypatch)
    streamed = helpers.classifier_views(distill, _config(folder, teacher, **{"data.stream": "stream", **resized}),
                                        tmp_path / "stream", monkeypatch)
    reseeded = _config(folder, teacher, **{"data.stream": "stream", "run.seed": 1, **resized})
    other = helpers.classifier_views(distill, reseeded, tmp_path / "other", monkeypatch)
    assert memory.shape == streamed.shape == (12, 8, 3, SIZE, SIZE)
    assert (streamed - memory).abs().mean() < 0.02
    assert (other - memory).abs().mean() > 5 * (streamed - memory).abs().mean()


def test_the_teacher_sees_the_students_view_of_each_step(folder, teacher, tmp_path, monkeypatch):
    """Targets are computed per batch on the streamed views, not once per image: the teacher's inputs are the
    very tensors the student is trained on."""
    student_views, teacher_views = [], []
    real_flip = classify_module.flip_crops
    monkeypatch.setattr(classify_module, "flip_crops",
                        lambda *a, **k: student_views.append(real_flip(*a, **k)) or student_views[-1])
    real_objective = distill_module.distillation_objective

    def objective(logits, teacher_logits, *args):
        teacher_views.append(teacher_logits)
        return real_objective(logits, teacher_logits, *args)

    monkeypatch.setattr(distill_module, "distillation_objective", objective)
    distill(_config(folder, teacher, **{"data.stream": "stream", "distill.crop": "resized"}), tmp_path / "run")
    _, network, _ = read_classifier(teacher)
    network.eval()
    with torch.no_grad():
        expected = [network(views) for views in student_views]
    assert len(teacher_views) == len(expected) == 12
    assert all(torch.allclose(t, e, atol=1e-5) for t, e in zip(teacher_views, expected, strict=True))


@pytest.mark.parametrize("crop", ["pad", "resized"])
def test_a_signal_mid_epoch_and_resume_are_exact_when_streamed(folder, teacher, tmp_path, monkeypatch, crop):
    config = _config(folder, teacher, **{"data.stream": "stream", "distill.crop": crop})
    # step 2 is mid-epoch: 6 steps an epoch
    helpers.assert_resume_after_a_signal_at_step_2_is_exact(distill, config, crop, tmp_path, monkeypatch)


@pytest.mark.parametrize("crop", ["pad", "resized"])
def test_a_damaged_training_image_is_refused_with_its_name(teacher, tmp_path, crop):
    root = helpers.write_folder(tmp_path / "bad", helpers.smooth_images(48, SIZE), classes=4)
    path = root / "class0" / "img0000.png"
    path.write_bytes(path.read_bytes()[:100])
    config = _config(root, teacher, **{"data.stream": "stream", "distill.crop": crop, "distill.alpha": "1",
                                       "distill.batch_size": "48", "distill.epochs": "1"})
    with pytest.raises(SimCLRv2Error, match=r"^cannot (read|decode) image \S*img0000\.png .*; remove or replace"):
        distill(config, tmp_path / "run")
