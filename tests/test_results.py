"""The typed results runs write: exact values, JSON round trips, selection on validation, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from simclrv2.checkpoint import MetricsLog, read_metrics
from simclrv2.errors import SimCLRv2Error
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
    label_order,
    metrics_record,
)

# 8 samples, 3 classes. True 0: predicted 0, 0, 1. True 1: predicted 1, 2. True 2: predicted 2, 2, 0.
LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
PREDS = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
CLASSES = ["tee", "bag", "boot"]


def _scores(top1: float = 0.5) -> ClassificationScores:
    return ClassificationScores(top1, {"tee": 1.0, "bag": 0.0}, [[2, 0], [1, 0]], ["tee", "bag"])


def test_scores_from_predictions_match_the_hand_count():
    scores = ClassificationScores.from_predictions(PREDS, LABELS, CLASSES)
    assert scores.top1 == pytest.approx(5 / 8)
    assert scores.per_class == pytest.approx({"tee": 2 / 3, "bag": 1 / 2, "boot": 2 / 3})
    assert scores.confusion == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    assert scores.classes == CLASSES and scores.num_samples == 8


def test_a_class_without_samples_has_no_recall_rather_than_zero():
    scores = ClassificationScores.from_predictions(torch.tensor([0, 0]), torch.tensor([0, 1]), ["a", "b", "c"])
    assert scores.per_class == {"a": 1.0, "b": 0.0}


def test_stage_result_round_trips_through_result_json(tmp_path):
    result = StageResult("pretrain", str(tmp_path), "checkpoints/final.pt", val=_scores(0.8), test=None,
                         details={"knn_top1": 0.8, "knn_top1_at_init": 0.55, "pairs_per_s": 312.5})
    path = result.write(tmp_path)
    assert path == tmp_path / "result.json"
    assert json.loads(path.read_text())["val"]["top1"] == 0.8  # plain JSON, stable keys
    again = StageResult.read(tmp_path)
    assert again == result and again.val_top1 == 0.8 and again.test_top1 is None
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left


def test_reading_a_missing_result_says_the_stage_has_not_finished(tmp_path):
    with pytest.raises(SimCLRv2Error, match="result.json not found: the stage has not finished"):
        StageResult.read(tmp_path)


@pytest.mark.parametrize("content, message", [
    ('{"stage": "finetune", "top1": 0.7}', "is not a simclrv2-result file"),  # the old, untyped format
    ("[1, 2]", "is not a simclrv2-result file"),
    ("{cut", "cannot read"),
    ('{"format": "simclrv2-result", "format_version": 99}', "format_version 99"),
])
def test_reading_a_foreign_result_file_is_one_clear_error(tmp_path, content, message):
    (tmp_path / "result.json").write_text(content)
    with pytest.raises(SimCLRv2Error, match=message) as info:
        StageResult.read(tmp_path)
    assert "\n" not in str(info.value)


def test_a_wrongly_typed_field_names_the_field(tmp_path):
    data = StageResult("finetune", "r", None, _scores(), None).to_json()
    data["val"]["top1"] = "high"
    (tmp_path / "result.json").write_text(json.dumps(data))
    with pytest.raises(SimCLRv2Error, match=r"\(val\): 'top1' has the wrong type"):
        StageResult.read(tmp_path)
    data["val"]["top1"], data["val"]["confusion"] = 0.5, [[1, 2]]
    (tmp_path / "result.json").write_text(json.dumps(data))
    with pytest.raises(SimCLRv2Error, match="not 2 x 2"):
        StageResult.read(tmp_path)


def test_unknown_stage_is_refused():
    with pytest.raises(SimCLRv2Error, match="unknown stage 'evaluation'"):
        StageResult("evaluation", "r", None, None, None)


def test_best_row_is_chosen_on_validation_even_when_another_wins_on_test():
    rows = [SummaryRow("supervised-only", "1%", "sup", val_top1=0.80, test_top1=0.90),
            SummaryRow("fine-tuned", "1%", "ft", val_top1=0.85, test_top1=0.84),
            SummaryRow("linear", "1%", "lin", val_top1=None, test_top1=0.99)]
    assert choose_best(rows).run == "ft"
    assert choose_best([rows[2]]) is None and choose_best([]) is None


def test_a_summary_row_takes_both_scores_of_its_stage_result():
    result = StageResult("finetune", "r", None, val=_scores(0.8), test=_scores(0.7))
    assert SummaryRow.from_result("fine-tuned", "1%", "ft", result) == SummaryRow("fine-tuned", "1%", "ft", 0.8, 0.7)


def test_best_row_keeps_the_first_on_a_validation_tie():
    rows = [SummaryRow("a", "1%", "a", 0.8, 0.1), SummaryRow("b", "1%", "b", 0.8, 0.9)]
    assert choose_best(rows).run == "a"


def _summary() -> PipelineSummary:
    rows = [SummaryRow("supervised-only", "10%", "sup10", 0.86, 0.855),
            SummaryRow("supervised-only", "1%", "sup1", 0.80, 0.79),
            SummaryRow("fine-tuned", "1%", "ft1", 0.851, 0.8449),
            SummaryRow("distilled", "10%", "dist10", None, None)]
    return PipelineSummary("fashion-mnist", "ResNet-18 0.25x", rows, choose_best(rows), knn_init=0.56,
                           knn_final=0.81, wall_time_s=812.5, stage_seconds={"pretrain": 480.0, "ft1": 60.0})


def test_summary_round_trips_through_summary_json(tmp_path):
    summary = _summary()
    summary.write(tmp_path)
    assert PipelineSummary.read(tmp_path) == summary
    assert json.loads((tmp_path / "summary.json").read_text())["best"]["run"] == "sup10"


def test_missing_summary_says_how_to_finish_the_pipeline(tmp_path):
    with pytest.raises(SimCLRv2Error, match="summary.json not found: the pipeline has not finished"):
        PipelineSummary.read(tmp_path)


def test_summary_table_has_methods_down_fractions_across_val_and_test_in_percent():
    lines = _summary().format_table().splitlines()
    assert "validation | test" in lines[0]
    assert lines[1].index("1%") < lines[1].index("10%")  # sorted by fraction, not by first appearance
    assert lines[2].split() == ["val", "|", "test", "val", "|", "test"]
    assert lines[3].split() == ["supervised-only", "80.00", "|", "79.00", "86.00", "|", "85.50"]
    assert lines[4].split() == ["fine-tuned", "85.10", "|", "84.49", "-", "|", "-"]
    assert lines[5].split() == ["distilled", "-", "|", "-", "-", "|", "-"]
    assert lines[6] == "best on validation: supervised-only with 10% labels (val 86.00, test 85.50)"
    assert lines[7] == "validation kNN: 81.00 pretrained vs 56.00 at random init"


def test_label_fractions_sort_per_class_counts_then_percentages():
    assert sorted(["10%", "100%", "1%", "10/class", "all"], key=label_order) == [
        "10/class", "1%", "10%", "100%", "all"]


def test_metrics_records_are_json_lines_with_the_documented_keys(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write(**metrics_record(TrainRecord(step=3, epoch=0.75, loss=5.1, lr=0.2)), stage="pretrain")
    log.write(**metrics_record(EvalRecord(step=4, epoch=1.0, val_top1=0.7)))
    log.write(**metrics_record(KnnRecord(step=4, epoch=1.0, knn_top1=0.6)))
    train, evaluation, knn = read_metrics(tmp_path / "metrics.jsonl")
    assert (train["event"], train["step"], train["loss"], train["lr"], train["stage"]) == ("train", 3, 5.1, 0.2,
                                                                                           "pretrain")
    assert (evaluation["event"], evaluation["val_top1"]) == ("eval", 0.7)
    assert (knn["event"], knn["knn_top1"], knn["epoch"]) == ("knn", 0.6, 1.0)


def test_embeddings_round_trip_and_reject_labels_without_a_class(tmp_path):
    emb = Embeddings(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]), CLASSES, "pretrained encoder, val")
    emb.save(tmp_path)
    again = Embeddings.load(tmp_path)
    assert torch.equal(again.features, emb.features) and torch.equal(again.labels, emb.labels)
    assert (again.classes, again.source) == (CLASSES, emb.source)
    with pytest.raises(SimCLRv2Error, match=r"must lie in \[0, 3\)"):
        Embeddings(torch.randn(2, 4), torch.tensor([0, 5]), CLASSES, "")
