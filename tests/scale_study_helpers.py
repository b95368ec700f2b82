"""Fake stages for the scale study's tests (the real runs take hours): they record each call and its config, and
score from the config alone, never from test, so a choice made on test would show."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark_scripts import load_benchmark
from simclrv2.results import ClassificationScores, StageResult

scale_study = load_benchmark("scale_study")


def scores(top1: float) -> ClassificationScores:
    return ClassificationScores(top1, {}, [[1]], ["a"])


class FakeStages:
    """Stage functions that record their calls and give scores that depend on the config (never on test)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.configs: dict[str, object] = {}

    def make(self, stage: str):
        def run(config, run_dir, resume=False):
            run_dir = Path(run_dir)
            if (run_dir / "result.json").exists():
                return StageResult.read(run_dir)
            self.calls.append((stage, run_dir.name))
            self.configs[run_dir.name] = config
            width = config.model.width_multiplier
            lr = {"finetune": config.finetune.optimizer.base_lr,
                  "supervised": config.supervised.optimizer.base_lr}.get(stage, 0.0)
            # validation prefers lr 0.01 (fine-tuning) / 0.1 (supervised), 0.03 / 0.3 for a deeper encoder than
            # ResNet-18; test ranks the candidates the other way round, so a choice made on test would be visible
            deeper = config.model.depth != 18
            best_lr = (0.03 if deeper else 0.01) if stage == "finetune" else (0.3 if deeper else 0.1)
            val = 0.5 + width / 10 - abs(lr - best_lr)
            if stage == "finetune":  # pretraining at τ 0.1 fine-tunes best
                val -= abs(config.pretrain.temperature - 0.1) / 10
            test = 1.5 - val + config.run.seed / 100
            details = ({"knn_top1": 0.7} if stage == "pretrain" else
                       {"teacher": config.distill.teacher} if stage == "distill" else {})
            result = StageResult(stage, str(run_dir), None, None if stage == "pretrain" else scores(val),
                                 None if stage == "pretrain" else scores(test), details)
            run_dir.mkdir(parents=True)
            (run_dir / "result.json").write_text(json.dumps(result.to_json()))
            return result
        return run


def fake_stages(monkeypatch) -> FakeStages:
    """Fake stages in place of the study's own for one test (``monkeypatch`` puts the real ones back)."""
    stages = FakeStages()
    monkeypatch.setattr(scale_study, "STAGES", {s: stages.make(s) for s in scale_study.STAGES})
    return stages


def study(tmp_path, *extra: str) -> list[dict]:
    results = tmp_path / "results.jsonl"
    scale_study.main(["--widths", "0.25", "0.5", "--subsets", "10/class", "1%", "--seeds", "0", "1",
                      "--out", str(tmp_path / "runs"), "--results", str(results), *extra])
    return [json.loads(line) for line in results.read_text().splitlines()]
