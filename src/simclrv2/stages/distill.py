"""Stage 3: distillation on unlabeled images (SimCLRv2 §2.3).

A frozen fine-tuned teacher labels every training image with softened predictions P_T(y|x; τ), computed on
the **same augmented view** the student sees; the student minimises −Σ_y P_T log P_S (plus, optionally,
(1 − α)·CE on the labelled subset). The student has the teacher's architecture (self-distillation) or the
``[model]`` one (big-to-small), from its own pretrained weights or from scratch.

The images are in memory or streamed, as ``data.stream`` chooses. Either way the teacher's targets are computed
per batch, never cached per image: each step's view is a fresh random crop and flip, so a cached target would be
the teacher's prediction for another view than the one the student is trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from simclrv2.checkpoint import read_classifier, read_pretrained
from simclrv2.config import Config
from simclrv2.errors import SimCLRv2Error
from simclrv2.logs import get_logger
from simclrv2.losses import distillation_objective
from simclrv2.models import Classifier
from simclrv2.models.spec import ModelSpec
from simclrv2.results import StageResult
from simclrv2.runtime import autocast, prepare_model
from simclrv2.stages.classify import ClassifierSetup, train_classifier
from simclrv2.stages.engine import StepTime
from simclrv2.stages.finetune import subset_images
from simclrv2.stages.inputs import data_for_network, seals_test_split, stage_data
from simclrv2.stages.session import open_session

STAGE = "distill"
IDENTITY_SECTIONS = ("data", "model", "distill")


def student_for(config: Config, teacher_spec: ModelSpec, head_layer: int, image_size: int, channels: int,
                num_classes: int, teacher_pretrained: str = "") -> tuple[ModelSpec, Classifier, str]:
    """The student and the pretraining run it starts from ("": from scratch): ``distill.student_pretrained``, else
    the run the teacher was fine-tuned from (``teacher_pretrained``, recorded in the teacher's checkpoint)."""
    cfg = config.distill
    spec = teacher_spec if cfg.student == "teacher" else ModelSpec.from_config(config.model, image_size, channels)
    head_layer = min(head_layer, spec.head_layers)
    if cfg.student_init == "scratch":
        return spec, spec.build_classifier(head_layer, num_classes, seed=config.run.seed), ""
    source = cfg.student_pretrained or teacher_pretrained
    if not source:
        raise SimCLRv2Error(f"the teacher {cfg.teacher} records no pretraining run to start the student from (a "
                            "supervised run has none); set distill.student_pretrained to the student's pretraining "
                            "run, or distill.student_init = 'scratch'")
    if not cfg.student_pretrained and not Path(source).exists():
        raise SimCLRv2Error(f"the teacher's pretraining run {source} (recorded in {cfg.teacher}) is not there any "
                            "more; pass its new place as distill.student_pretrained, or set distill.student_init = "
                            "'scratch'")
    pretrained_spec, simclr, _ = read_pretrained(source)
    if pretrained_spec != spec:
        given = "distill.student_pretrained" if cfg.student_pretrained else f"the teacher's pretraining run {source}"
        raise SimCLRv2Error(f"{given} is a {pretrained_spec.describe()} but the student is a {spec.describe()}; "
                            "pass the student's own pretraining run as distill.student_pretrained")
    whose = "" if cfg.student_pretrained else " (the teacher's; distill.student_pretrained chooses another)"
    get_logger().info(f"distill: the student starts from the pretraining run {source}{whose}")
    return spec, Classifier.from_simclr(simclr, head_layer, num_classes), str(Path(source).resolve())


@seals_test_split
def distill(config: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
            on_step: Callable[[StepTime], None] | None = None) -> StageResult:
    """Distils ``distill.teacher`` into a student on all training images (labels unused unless alpha < 1);
    ``on_step`` times every step (:class:`~simclrv2.stages.engine.StepTime`), as in pretraining."""
    cfg, run = config.distill, config.run
    session = open_session(STAGE, config, run_dir, resume=resume, overwrite=overwrite,
                           identity_sections=IDENTITY_SECTIONS)
    if session.finished:
        return StageResult.read(session.run_dir)
    if not cfg.teacher:
        raise SimCLRv2Error("no teacher given: set distill.teacher to a fine-tuned run directory")
    teacher_spec, teacher, payload = read_classifier(cfg.teacher)
    head_layer, num_classes = int(payload["head_layer"]), int(payload["num_classes"])
    data_config = data_for_network(config.data, teacher_spec.in_channels, payload["image_size"])
    data, stream = stage_data(data_config)
    train, labelled = data.train, data.labelled
    if labelled.labels is not None and num_classes != labelled.num_classes:
        raise SimCLRv2Error(f"the teacher predicts {num_classes} classes but {labelled.name} has "
                            f"{labelled.num_classes}; distil on the data the teacher was fine-tuned for")
    teacher_spec.check_data(train.channels, f"the teacher {cfg.teacher}")
    spec, student, student_pretrained = student_for(config, teacher_spec, head_layer, train.image_size,
                                                    train.channels, num_classes, payload.get("pretrained_run", ""))
    temperature = cfg.temperature_for(self_distillation=spec == teacher_spec)
    targets = torch.full((len(train),), -1, dtype=torch.long)  # -1: unlabeled for the (1 - alpha) term
    listed = None  # the labelled subset's ids, written to the run directory
    if cfg.alpha < 1:
        if train.labels is None:
            raise SimCLRv2Error("distill.alpha < 1 needs labels on the training split; set distill.alpha = 1")
        chosen = data.labelled_subset(config.finetune.labels, run.seed)  # positions in train (it is labelled)
        targets[chosen] = train.labels[chosen]
        listed = subset_images(train, chosen)[1] if stream is not None else (train, chosen)
    device = session.device
    targets = targets.to(device)
    # eval mode: BN uses running statistics, so the teacher's targets do not depend on the batch
    teacher = prepare_model(teacher, device, run.channels_last).eval().requires_grad_(False)

    def loss(logits: torch.Tensor, index: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(device, run.precision):
            teacher_logits = teacher(views)
        return distillation_objective(logits, teacher_logits.float(), temperature, targets[index], cfg.alpha)

    classes = tuple(payload["classes"])
    setup = ClassifierSetup(
        model=student, spec=spec, head_layer=head_layer, classes=classes,
        images=train.images if stream is None else train, loss=loss, labelled=listed, stream=stream,
        # the tempered softmax scales the gradients of the parameters LARS does not adapt (classifier, BN,
        # biases) by 1/τ; only trust-ratio-adapted weights are immune to that
        plain_lr_scale=min(1.0, temperature) if cfg.optimizer.name == "lars" else 1.0,
        details={"teacher": str(cfg.teacher), "teacher_architecture": teacher_spec.describe(),
                 "architecture": spec.describe(), "temperature": temperature, "alpha": cfg.alpha,
                 "student_init": cfg.student_init, "student_pretrained": student_pretrained},
        data_config=data_config, pretrained_run=student_pretrained,
    )
    outcome = train_classifier(session, setup, cfg, data, on_step=on_step)
    _compare_with_teacher(outcome, cfg.teacher)
    return outcome


def _compare_with_teacher(student: StageResult, teacher_dir: str) -> None:
    """A student that ends below its teacher on validation says so: distillation is meant to add, not lose."""
    try:
        teacher = StageResult.read(Path(teacher_dir))
    except SimCLRv2Error:
        return
    if student.val is not None and teacher.val is not None and student.val.top1 < teacher.val.top1:
        get_logger().warning(f"warning: the distilled student ends below its teacher on validation "
                             f"({student.val.top1:.4f} < {teacher.val.top1:.4f}); train longer (distill.epochs) or "
                             "check distill.temperature")

