"""The label-efficiency benchmark's aggregation: mean ± sd over seeds, per method and label subset."""

from __future__ import annotations

import pytest

from benchmark_scripts import load_benchmark
from simclrv2.results import PipelineSummary, SummaryRow

label_efficiency = load_benchmark("label_efficiency")


def _summary(finetuned: float, supervised: float) -> PipelineSummary:
    rows = [SummaryRow("fine-tuned (head layer 1)", "1%", "ft", finetuned + 0.01, finetuned),
            SummaryRow("supervised only", "1%", "sup", supervised + 0.01, supervised)]
    return PipelineSummary("fashion-mnist", "r18", rows, rows[0], None, None, 0.0)


def test_seeds_aggregate_to_mean_and_sample_sd_in_percent():
    results = label_efficiency.aggregate([_summary(0.80, 0.70), _summary(0.84, 0.74), _summary(0.82, 0.72)])
    mean, sd = results[("fine-tuned (head layer 1)", "1%")]["test"]
    assert mean == pytest.approx(82.0) and sd == pytest.approx(2.0)
    assert results[("supervised only", "1%")]["val"][0] == pytest.approx(73.0)


def test_table_has_one_row_per_method_and_a_dash_for_missing_cells():
    results = label_efficiency.aggregate([_summary(0.80, 0.70), _summary(0.84, 0.74)])
    text = label_efficiency.table(results, ("10/class", "1%"), [0, 1])
    assert "| fine-tuned (head layer 1) | - | 82.0 ± 2.8 (83.0) |" in text
    assert "supervised only" in text


def test_the_default_config_and_the_docstrings_command_name_configs_that_load(tmp_path, monkeypatch):
    from simclrv2.config import load_config

    monkeypatch.chdir(tmp_path)  # not only from the repository root

    default = label_efficiency.build_parser().parse_args([]).config
    command = next(line.split() for line in label_efficiency.__doc__.splitlines()
                   if "benchmarks/label_efficiency.py" in line)
    assert command[:2] == ["python", "benchmarks/label_efficiency.py"]
    documented = label_efficiency.build_parser().parse_args(command[2:]).config
    for config in (default, documented):
        assert load_config(config).pretrain.epochs >= 1  # a file or a shipped name that resolves, from any folder


def test_per_seed_records_and_paired_gains_subtract_the_same_seeds_baseline():
    summaries = [_summary(0.80, 0.70), _summary(0.84, 0.79), _summary(0.82, 0.72)]
    records = label_efficiency.per_seed(summaries, [0, 1, 2])
    assert {(r["method"], r["seed"]): r["test_top1"] for r in records}[("supervised only", 1)] == 79.0
    text = label_efficiency.paired_gains(records)
    # differences 10, 5, 10: mean 8.3, sd 2.9 (an unpaired mean difference would be the same, the sd would not)
    assert "| fine-tuned (head layer 1) | +8.3 ± 2.9 (n=3) |" in text
    assert "| supervised only |" not in text
