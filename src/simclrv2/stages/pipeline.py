"""``simclrv2 pipeline``: pretrain → fine-tune → supervised baseline → linear eval → distil → report.

Each stage runs in its own sub-directory. ``pipeline.json`` records a fingerprint of every stage's config
(and of the stages it builds on): a finished stage whose fingerprint is unchanged is reused, an interrupted
one is resumed, and a stage whose config changed is re-run from scratch, so outputs of two configs never mix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from simclrv2 import dist
from simclrv2.atomic import atomic_write_text
from simclrv2.checkpoint import read_pretrained
from simclrv2.config import Config, config_to_dict
from simclrv2.data import find_data_dir
from simclrv2.errors import SimCLRv2Error
from simclrv2.eval.features import encoder_features
from simclrv2.logs import get_logger
from simclrv2.results import Embeddings, PipelineSummary, StageResult, SummaryRow, choose_best
from simclrv2.runtime import resolve_device
from simclrv2.stages import distill as distill_module
from simclrv2.stages import finetune as finetune_module
from simclrv2.stages import pretrain as pretrain_module
from simclrv2.stages import supervised as supervised_module
from simclrv2.stages.distill import distill
from simclrv2.stages.evaluate import evaluate
from simclrv2.stages.finetune import finetune
from simclrv2.stages.inputs import seals_test_split, stage_data
from simclrv2.stages.pretrain import pretrain
from simclrv2.stages.session import open_session
from simclrv2.stages.supervised import supervised

STATE_FILE = "pipeline.json"


@dataclass(frozen=True)
class Step:
    name: str  # sub-directory
    method: str  # row of the final table
    labels: str  # column of the final table ("" for pretraining)
    config: Config
    runner: Callable[..., Any]
    sections: tuple[str, ...]  # the config sections the stage's output depends on
    upstream: tuple[str, ...] = field(default=())
    # (section, key) paths the pipeline wired to its own stages: what they point to is captured by the upstream
    # fingerprints, so the paths themselves are left out and a moved or copied pipeline directory still matches
    wired: tuple[tuple[str, str], ...] = field(default=())


def slug(labels: str) -> str:
    return labels.replace("%", "pct").replace("/", "-per-").replace(" ", "")


def plan(config: Config, run_dir: Path) -> list[Step]:
    """Every stage of the pipeline with its own config, in the order they run."""
    p, ft = config.pipeline, config.finetune
    pretrain_dir = str(run_dir / "pretrain")
    steps = [Step("pretrain", "pretraining", "", config, pretrain, pretrain_module.IDENTITY_SECTIONS)]
    for labels in p.label_fractions:
        layers = sorted(set(p.head_layers) | ({ft.head_layer} if p.distill else set()))
        for j in layers:
            c = dataclasses.replace(config, finetune=dataclasses.replace(ft, labels=labels, head_layer=j,
                                                                          pretrained=pretrain_dir))
            steps.append(Step(f"finetune-{slug(labels)}-layer{j}", f"fine-tuned (head layer {j})", labels, c,
                              finetune, finetune_module.IDENTITY_SECTIONS, ("pretrain",),
                              (("finetune", "pretrained"),)))
        if p.supervised:
            c = dataclasses.replace(config, finetune=dataclasses.replace(ft, labels=labels))
            steps.append(Step(f"supervised-{slug(labels)}", "supervised only", labels, c, supervised,
                              supervised_module.IDENTITY_SECTIONS))
        if p.linear_eval:
            c = dataclasses.replace(config, evaluate=dataclasses.replace(
                config.evaluate, mode="linear", checkpoint=pretrain_dir, labels=labels))
            steps.append(Step(f"linear-{slug(labels)}", "linear eval", labels, c, evaluate, ("data", "evaluate"),
                              ("pretrain",), (("evaluate", "checkpoint"),)))
        if p.distill:
            teacher = f"finetune-{slug(labels)}-layer{ft.head_layer}"
            student_pretrained = config.distill.student_pretrained
            # a self-distilled student that starts from pretrained weights starts from this pipeline's own
            from_pipeline = (config.distill.student_init == "pretrained" and not student_pretrained
                             and config.distill.student == "teacher")
            c = dataclasses.replace(
                config, finetune=dataclasses.replace(ft, labels=labels),
                distill=dataclasses.replace(config.distill, teacher=str(run_dir / teacher),
                                            student_pretrained=pretrain_dir if from_pipeline else student_pretrained))
            steps.append(Step(f"distill-{slug(labels)}", "distilled student", labels, c, distill,
                              (*distill_module.IDENTITY_SECTIONS, "finetune"),
                              (teacher, "pretrain") if from_pipeline else (teacher,),
                              (("distill", "teacher"), ("distill", "student_pretrained")) if from_pipeline
                              else (("distill", "teacher"),)))
    return steps


def fingerprint(step: Step, upstream: dict[str, str]) -> str:
    """Hash of what makes a stage's output: the config sections it reads, the seed and kNN settings, and the
    fingerprints of the stages it builds on."""
    full = config_to_dict(step.config)
    as_dict = {section: dict(full[section]) for section in step.sections}
    for section, key in step.wired:
        if section in as_dict:
            as_dict[section][key] = "<pipeline>"
    run = full["run"]
    as_dict["run"] = {key: run[key] for key in ("seed", "knn_k", "knn_temperature")}
    as_dict["upstream"] = {name: upstream[name] for name in step.upstream}
    return hashlib.sha256(json.dumps(as_dict, sort_keys=True, default=str).encode()).hexdigest()[:16]


@seals_test_split  # its own reads (the embeddings' validation images) too
def pipeline(config: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False
             ) -> PipelineSummary:
    """Runs every stage (reusing finished ones with --resume); returns the summary written to summary.json.

    Under torchrun every process runs every stage together; only rank 0 writes the pipeline's own files.
    """
    session = open_session("pipeline", config, run_dir, resume=resume, overwrite=overwrite)
    main, run_dir = dist.is_main(), session.run_dir
    if not config.data.download:  # missing data is the commonest first error: say so before writing anything
        _find_data(config.data)
    session.create()  # the directory and config.toml
    dist.barrier()
    state_path = run_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() and not overwrite else {"steps": {}}

    def write_state() -> None:
        if main:
            atomic_write_text(state_path, json.dumps(state, indent=1))

    fingerprints: dict[str, str] = {}
    rows = []
    for step in plan(config, run_dir):
        fp = fingerprint(step, fingerprints)
        fingerprints[step.name] = fp
        record = state["steps"].get(step.name, {})
        same = record.get("fingerprint") == fp
        if same and record.get("status") == "done":
            _say(f"{step.name}: unchanged, reusing")
            result = StageResult.read(run_dir / step.name)
        else:
            if (run_dir / step.name).exists() and not same:
                _say(f"{step.name}: config changed, re-running from scratch")
            _say(f"{step.name}: {'resuming' if same else 'running'}")
            state["steps"][step.name] = {"fingerprint": fp, "status": "started"}
            write_state()
            start = time.perf_counter()
            result = step.runner(step.config, run_dir / step.name, resume=same, overwrite=not same)
            state["steps"][step.name] = {"fingerprint": fp, "status": "done",
                                         "seconds": round(time.perf_counter() - start + record.get("seconds", 0), 1)}
            write_state()
            if step.name == "pretrain" and config.pipeline.embedding_samples and main:
                save_embeddings(config, run_dir)
        if step.labels:
            rows.append(SummaryRow.from_result(step.method, step.labels, step.name, result))
        dist.barrier()
    summary = _summary(config, run_dir, state, rows)
    if main:
        summary.write(run_dir)
        get_logger().info(summary.format_table())
        _report(run_dir)
    dist.barrier()
    return summary


def _find_data(data) -> None:
    """Raises the reader's one-line error when the configured data is not there."""
    if data.dataset == "webdataset":
        from simclrv2.data.streaming.shards import shard_index

        if not data.data_dir:
            raise SimCLRv2Error("the webdataset dataset reads data.data_dir; set it to the folder of shards")
        shard_index(data.data_dir)
    else:
        find_data_dir(data.dataset, data.data_dir or None)


def _say(message: str) -> None:
    get_logger().info(f"[pipeline] {message}")


def save_embeddings(config: Config, run_dir: Path) -> None:
    """Encoder features of some validation images (in memory or streamed), for the report's 2-D projection."""
    val = stage_data(config.data)[0].val
    if val is None:
        _say("no embedding plot: no labelled validation split")
        return
    val = val.subset(torch.arange(min(config.pipeline.embedding_samples, len(val))))
    _, model, _ = read_pretrained(run_dir / "pretrain")
    device = resolve_device(config.run.device)
    features = encoder_features(model.encoder.to(device), val, device, config.run.eval_batch_size,
                                config.run.precision)
    Embeddings(features, val.labels, list(val.classes), "pretrained encoder, validation images").save(run_dir)


def _summary(config: Config, run_dir: Path, state: dict, rows: list[SummaryRow]) -> PipelineSummary:
    pretrained = StageResult.read(run_dir / "pretrain")
    seconds = {name: float(s.get("seconds", 0)) for name, s in state["steps"].items()}
    return PipelineSummary(
        dataset=config.data.dataset, architecture=pretrained.details.get("architecture", ""), rows=rows,
        best=choose_best(rows), knn_init=pretrained.details.get("knn_top1_at_init"),
        knn_final=pretrained.details.get("knn_top1"), wall_time_s=round(sum(seconds.values()), 1),
        stage_seconds=seconds,
    )


def _report(run_dir: Path) -> None:
    try:
        from simclrv2.report import build_report

        path = build_report(run_dir)
        _say(f"report: {path}")
    except SimCLRv2Error as exc:
        _say(f"no report: {exc}")
