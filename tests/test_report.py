"""The HTML report, built from synthetic run directories written with the typed results."""

from __future__ import annotations

import re
import struct
import subprocess
import sys

import pytest
import torch

from simclrv2.checkpoint import MetricsLog
from simclrv2.errors import SimCLRv2Error
from simclrv2.report import build_report, pca_2d
from simclrv2.results import (
    ClassificationScores,
    Embeddings,
    EvalRecord,
    KnnRecord,
    PipelineSummary,
    StageResult,
    SummaryRow,
    TrainRecord,
    choose_best,
    metrics_record,
)

CLASSES = ["T-shirt/top", "Trouser", "Pullover"]
VAL_CONFUSION = [[8, 1, 1], [0, 10, 0], [2, 3, 5]]
ROWS = [  # method, labels, run, val top-1, test top-1: the fine-tuned 10% row wins on validation,
    SummaryRow("supervised-only", "1%", "supervised_1", 0.712, 0.705),  # the distilled one only on test
    SummaryRow("supervised-only", "10%", "supervised_10", 0.801, 0.799),
    SummaryRow("fine-tuned (head layer 1)", "1%", "finetune_1", 0.774, 0.770),
    SummaryRow("fine-tuned (head layer 1)", "10%", "finetune_10", 0.861, 0.850),
    SummaryRow("distilled", "10%", "distill_10", 0.855, 0.871),
]
STAGE = {"supervised": "supervised", "finetune": "finetune", "distill": "distill"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scores(top1: float, split: str = "val") -> ClassificationScores:
    if split == "test":  # differs from validation, so a section showing the wrong split is caught
        return ClassificationScores(top1, dict.fromkeys(CLASSES, 1.0), [[5, 0, 0], [0, 5, 0], [0, 0, 5]], CLASSES)
    return ClassificationScores(top1, {"T-shirt/top": 0.8, "Trouser": 1.0, "Pullover": 0.5}, VAL_CONFUSION, CLASSES)


def _write_pretrain(run, knn=True, epochs=3, steps_per_epoch=4):
    log = MetricsLog(run / "metrics.jsonl")
    run.mkdir(parents=True)
    if knn:
        log.write(**metrics_record(KnnRecord(step=0, epoch=0, knn_top1=0.55)), stage="pretrain")
    for step in range(1, epochs * steps_per_epoch + 1):
        log.write(**metrics_record(TrainRecord(step, step / steps_per_epoch, 6.0 - 0.2 * step, 0.1)),
                  stage="pretrain")
        if knn and step % steps_per_epoch == 0:
            epoch = step // steps_per_epoch
            log.write(**metrics_record(KnnRecord(step, epoch, 0.55 + 0.1 * epoch)))
    StageResult("pretrain", str(run), "checkpoints/final.pt", None, None,
                {"knn_top1": 0.85, "knn_top1_at_init": 0.55, "pairs_per_s": 300.0}).write(run)


def _write_classifier(run, row):
    run.mkdir(parents=True)
    log = MetricsLog(run / "metrics.jsonl")
    for e in range(1, 4):
        log.write(**metrics_record(TrainRecord(10 * e, e, 2.0 / e, 0.01)))
        log.write(**metrics_record(EvalRecord(10 * e, e, row.val_top1 * e / 3)))
    StageResult(STAGE[row.run.split("_")[0]], str(run), "checkpoints/final.pt", _scores(row.val_top1),
                _scores(row.test_top1, "test")).write(run)


def _make_pipeline(root, knn=True, embeddings=True, augmentations=True):
    _write_pretrain(root / "pretrain", knn=knn)
    for row in ROWS:
        _write_classifier(root / row.run, row)
    PipelineSummary("fashion-mnist", "ResNet-18 0.25x", ROWS, choose_best(ROWS), 0.55 if knn else None,
                    0.85 if knn else None, 3725.0, {"pretrain": 3000.0}).write(root)
    if embeddings:
        labels = torch.arange(60) % 3
        features = torch.randn(60, 16, generator=torch.Generator().manual_seed(0)) + 4 * torch.eye(16)[labels]
        Embeddings(features, labels, CLASSES, "pretrained encoder, validation images").save(root)
    if augmentations:
        (root / "pretrain" / "augmentations.png").write_bytes(PNG_MAGIC + b"preview")
    return root


def _images(text):
    return re.findall(r'<img src="([^"]+)"', text)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = _make_pipeline(tmp_path_factory.mktemp("report") / "pipeline")
    page = build_report(root)
    return root, page, page.read_text()


def test_page_shows_every_picture_of_a_complete_pipeline(full):
    root, page, text = full
    assert page == root / "report" / "index.html"
    assert sorted(_images(text)) == sorted(["training_curves.png", "knn_accuracy.png", "label_efficiency.png",
                                            "val_accuracy_curves.png", "confusion_matrix.png",
                                            "embeddings_pca.png", "augmentations.png"])
    for name in _images(text):
        data = (page.parent / name).read_bytes()
        assert data[:8] == PNG_MAGIC
        if name != "augmentations.png":  # a real figure, not a blank canvas
            assert struct.unpack(">II", data[16:24])[0] >= 300 and len(data) > 5000
    assert "Left out" not in text and 'class="missing"' not in text


def test_page_names_the_best_row_chosen_on_validation_not_test(full):
    _, _, text = full
    assert "fine-tuned (head layer 1) with 10% labels: validation 86.1%, test 85.0% (run finetune_10/)" in text
    table = re.search(r'<table class="acc">.*?</table>', text, re.S).group(0)
    assert re.findall(r"<strong>([^<]+)</strong>", table) == ["86.1%", "85.0%"]  # not the distilled 87.1%
    assert "best row on validation, fine-tuned (head layer 1) with 10% labels (run finetune_10/)" in text


def test_table_has_val_and_test_of_every_cell_and_a_gap_for_a_missing_one(full):
    _, _, text = full
    table = re.search(r'<table class="acc">.*?</table>', text, re.S).group(0)
    for row in ROWS:
        assert f">{row.method}</th>" in table
        assert f"{100 * row.val_top1:.1f}%" in table and f"{100 * row.test_top1:.1f}%" in table
    assert table.index(">1%</th>") < table.index(">10%</th>")
    assert table.count('class="none"') == 2  # distilled has no 1% row: its val and test cells


def test_confusion_section_uses_validation_recall_per_class(full):
    _, _, text = full
    recall = re.search(r'<table class="acc per-class">.*?</table>', text, re.S).group(0)
    for name, value in zip(CLASSES, ["80.0%", "100.0%", "50.0%"], strict=True):
        assert f">{name}</th><td>{value}</td>" in recall
    assert "on 30 validation images" in text


def test_header_knn_and_footer(full):
    root, _, text = full
    assert "fashion-mnist" in text and "ResNet-18 0.25x" in text and "1 h 02 min" in text
    assert "from 55.0% at epoch 0 to 85.0% at epoch 3" in text
    assert f"simclrv2 report {root}" in text
    assert "<script" not in text and "://" not in text  # self-contained


def test_missing_optional_pieces_are_left_out_with_a_note(tmp_path):
    root = _make_pipeline(tmp_path / "p", knn=False, embeddings=False, augmentations=False)
    text = build_report(root).read_text()
    assert "knn_accuracy.png" not in text and "embeddings_pca.png" not in text
    assert "augmentations.png" not in text.replace("no augmentations.png", "")
    assert "the pretraining run logged no kNN records" in text
    assert "no readable embeddings.pt in p/" in text
    assert "the pretraining run left no augmentations.png" in text
    assert text.count('class="missing"') == 3
    assert len(_images(text)) == 4


def test_rebuild_removes_a_figure_whose_data_is_gone(tmp_path):
    root = tmp_path / "pre"
    _write_pretrain(root)
    Embeddings(torch.randn(6, 4), torch.arange(6) % 3, CLASSES, "validation images").save(root)
    build_report(root)
    assert (root / "report" / "embeddings_pca.png").is_file()
    (root / "embeddings.pt").unlink()
    build_report(root)
    assert not (root / "report" / "embeddings_pca.png").exists()


def test_unreadable_embeddings_are_a_note_not_a_failure(tmp_path):
    root = tmp_path / "pre"
    _write_pretrain(root)
    (root / "embeddings.pt").write_bytes(b"not a torch file")
    text = build_report(root).read_text()
    assert "Left out" in text and "embeddings.pt is left out: cannot read checkpoint" in text


def test_nothing_outside_the_report_folder_is_written(tmp_path):
    root = _make_pipeline(tmp_path / "p")
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    build_report(root)
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert {p for p in after if p not in before} <= {root / "report", *(root / "report").iterdir()}
    assert {p: after[p] for p in before} == before
    assert not list((root / "report").glob(".*tmp"))


def test_single_pretrain_run_shows_its_curves_and_says_what_is_missing(tmp_path):
    _write_pretrain(tmp_path / "pre")
    text = build_report(tmp_path / "pre").read_text()
    assert sorted(_images(text)) == ["knn_accuracy.png", "training_curves.png"]
    assert "single pretrain run" in text and "no summary.json" in text
    assert "this run has no validation scores" in text


def test_single_finetune_run_shows_its_validation_confusion(tmp_path):
    _write_classifier(tmp_path / "ft", ROWS[2])
    text = build_report(tmp_path / "ft").read_text()
    assert {"confusion_matrix.png", "val_accuracy_curves.png", "training_curves.png"} <= set(_images(text))
    assert "validation 77.4%, test 77.0%" in text


def test_unfinished_pipeline_reports_its_sub_runs(tmp_path):
    _write_pretrain(tmp_path / "p" / "pretrain")
    _write_classifier(tmp_path / "p" / "finetune_1", ROWS[2])
    text = build_report(tmp_path / "p").read_text()
    assert "no summary.json: the pipeline has not finished" in text
    assert "training_curves.png" in text and "knn_accuracy.png" in text


def test_foreign_result_file_is_one_clear_error(tmp_path):
    (tmp_path / "result.json").write_text('{"stage": "finetune", "top1": 0.7}')
    with pytest.raises(SimCLRv2Error, match="is not a simclrv2-result file"):
        build_report(tmp_path)


def test_missing_or_empty_run_dir_raises(tmp_path):
    with pytest.raises(SimCLRv2Error, match="not found"):
        build_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SimCLRv2Error, match="holds no run"):
        build_report(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_without_matplotlib_the_error_says_how_to_install(tmp_path, monkeypatch):
    _write_pretrain(tmp_path / "pre")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    with pytest.raises(SimCLRv2Error, match=r"pip install 'simclrv2\[report\]'"):
        build_report(tmp_path / "pre")


def test_package_imports_without_importing_matplotlib():
    code = "import sys, simclrv2.report; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pca_2d_matches_the_covariance_eigenvectors():
    gen = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(64, 2, generator=gen)).Q.T  # (2, 64) orthonormal directions
    t = torch.randn(300, 2, generator=gen) * torch.tensor([5.0, 2.0])
    x = t @ u + 0.05 * torch.randn(300, 64, generator=gen) + 3.0  # off-centre
    coords, explained = pca_2d(x)
    centred = (x - x.mean(0)).double()
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    reference = centred @ vectors[:, [-1, -2]]
    for j in range(2):  # equal up to the arbitrary sign of each direction
        sign = torch.sign(torch.dot(coords[:, j].double(), reference[:, j]))
        torch.testing.assert_close(coords[:, j].double(), sign * reference[:, j], atol=1e-3, rtol=1e-4)
    assert explained[0] > explained[1] and explained.sum() > 0.99
    torch.testing.assert_close(pca_2d(x)[0], coords)  # deterministic
    torch.testing.assert_close(pca_2d(-x)[0], -coords, atol=1e-4, rtol=0.0)  # sign fixed by the data
