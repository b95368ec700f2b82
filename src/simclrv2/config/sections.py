"""The config sections: one frozen dataclass each, defaults from docs/recipe.md, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from simclrv2.augment import AugmentConfig
from simclrv2.errors import SimCLRv2Error
from simclrv2.models.resnet import ARCHITECTURES


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise SimCLRv2Error(message)


def _check_choice(section: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{section}.{name} = {value!r} is not one of: {', '.join(choices)}")


@dataclass(frozen=True)
class DataConfig:
    """Which images to read. An empty ``data_dir`` searches $SIMCLRV2_DATA, the cache and Debian's folder."""

    dataset: str = "fashion-mnist"
    data_dir: str = ""
    image_size: int = 0  # 0: the dataset's own size (image folders: their most common shorter side, at most 96)
    channels: int = 0  # 1 (grey) or 3 (RGB); 0: the dataset's own (image folders: grey when every image is grey)
    train_split: str = "train"
    test_split: str = "test"
    train_limit: int = 0  # use only the first N training images (0: all); for quick experiments
    # class-balanced labelled TRAINING images held out to choose settings and report during training (-1: auto,
    # 10 % of the labelled training images up to 5,000; 0: none). They stay in the unlabeled pool.
    val_size: int = -1
    download: bool = False
    # Every stage on image folders and WebDataset shards: "memory" decodes everything up front (fastest for small
    # data), "stream" decodes and crops each step's images in DataLoader workers, "auto" streams above
    # stream_above images or when the decoded images would fill a quarter of the RAM.
    stream: str = "auto"
    stream_above: int = 100_000
    workers: int = -1  # DataLoader workers of the streaming path (-1: one per CPU core but one, at most 8)

    def __post_init__(self) -> None:
        _check(self.image_size >= 0, "data.image_size must be >= 0 (0 keeps the dataset's size)")
        _check(self.channels in (0, 1, 3), "data.channels must be 1 (grey), 3 (RGB) or 0 (the dataset's own)")
        _check_choice("data", "stream", self.stream, ("auto", "memory", "stream"))
        _check(self.stream_above >= 0, "data.stream_above must be >= 0 (the image count above which auto streams)")
        _check(self.workers >= -1, "data.workers must be >= -1 (-1: automatic, 0: decode in the training process)")
        _check(self.train_limit >= 0, "data.train_limit must be >= 0 (0 uses every training image)")
        _check(self.val_size >= -1, "data.val_size must be >= -1 (-1: automatic, 0: no validation split)")

    def resolved_val_size(self, num_labelled: int) -> int:
        if self.val_size >= 0:
            return self.val_size
        return min(5000, num_labelled // 10)


@dataclass(frozen=True)
class ModelConfig:
    """The ResNet encoder and projection head (docs/recipe.md#encoder). ``stem = "auto"``: the CIFAR stem <= 32 px."""

    depth: int = 18
    width_multiplier: float = 1.0
    sk_ratio: float = 0.0
    stem: str = "auto"
    head_layers: int = 3
    proj_dim: int = 128
    # pad the stem's max-pool and the SK networks' average pools as the authors' TensorFlow code does: what the
    # networks `simclrv2 import` brings from their checkpoints use (no parameters; models/tf_pooling.py)
    tf_pooling: bool = False

    def __post_init__(self) -> None:
        depths = ", ".join(str(d) for d in ARCHITECTURES)
        _check(self.depth in ARCHITECTURES, f"model.depth = {self.depth} is not a ResNet depth we build: {depths}")
        _check(self.width_multiplier > 0, "model.width_multiplier must be > 0")
        _check(0.0 <= self.sk_ratio < 1.0, "model.sk_ratio must be in [0, 1) (0 disables Selective Kernels)")
        _check_choice("model", "stem", self.stem, ("auto", "cifar", "imagenet"))
        _check(self.head_layers >= 1, "model.head_layers must be >= 1")
        _check(self.proj_dim >= 1, "model.proj_dim must be >= 1")

    def cifar_stem(self, image_size: int) -> bool:
        return self.stem == "cifar" or (self.stem == "auto" and image_size <= 32)


@dataclass(frozen=True)
class OptimizerConfig:
    """One optimiser and its schedule: every training stage has its own ``[stage.optimizer]`` table.

    ``lars`` is the paper's (trust ratio, BN and biases excluded); ``sgd`` (momentum) and ``adamw`` use the same
    exclusions from weight decay. The peak rate is ``base_lr`` scaled by the global batch (``sqrt``: base·√BS,
    ``linear``: base·BS/256, ``none``: base), reached after a linear warmup, then cosine decay to 0 per step.
    """

    name: str = "lars"
    base_lr: float = 0.075
    lr_scaling: str = "sqrt"
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD/LARS momentum, AdamW beta1
    warmup_fraction: float = 0.05

    def __post_init__(self) -> None:
        _check_choice("optimizer", "name", self.name, ("lars", "sgd", "adamw"))
        _check(self.base_lr > 0, "optimizer.base_lr must be > 0")
        _check_choice("optimizer", "lr_scaling", self.lr_scaling, ("sqrt", "linear", "none"))
        _check(self.weight_decay >= 0, "optimizer.weight_decay must be >= 0")
        _check(0 <= self.momentum < 1, "optimizer.momentum must be in [0, 1)")
        _check(0 <= self.warmup_fraction < 1, "optimizer.warmup_fraction must be in [0, 1)")


@dataclass(frozen=True)
class PretrainConfig:
    """Contrastive pretraining (docs/recipe.md#pretraining): NT-Xent, LARS, warmup + cosine, square-root LR scaling."""

    epochs: int = 100
    batch_size: int = 512  # global: split over processes
    temperature: float = 0.5
    memory_size: int = 0  # 0: no memory; SimCLRv2 used 65536 extra negatives from an EMA network
    memory_momentum: float = 0.999
    global_bn: bool = True
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "pretrain.epochs must be >= 1")
        _check(self.batch_size >= 2, "pretrain.batch_size must be >= 2 (NT-Xent needs negatives)")
        _check(self.temperature > 0, "pretrain.temperature must be > 0")
        _check(self.memory_size >= 0, "pretrain.memory_size must be >= 0 (0 disables the memory)")
        _check(0 < self.memory_momentum < 1, "pretrain.memory_momentum must be in (0, 1)")


@dataclass(frozen=True)
class RunConfig:
    """How a run executes: device, precision, seeds, logging, checkpoints and the kNN monitor."""

    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    # auto: bf16 autocast where the hardware runs it fast (GPU; CPU with AVX-512 BF16/AMX), else fp32.
    # bf16-math (CPU, opt-in): fp32 tensors whose convolutions and matmuls multiply in bf16 (oneDNN fpmath mode).
    # tf32 (CUDA, opt-in): the same with TF32 tensor cores. fp32 is exact fp32 everywhere (on CUDA too, where
    # PyTorch's own default runs convolutions in TF32)
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    # CPU: large tensors from the heap, freed memory kept for the next step (glibc; runtime.keep_freed_memory)
    keep_freed_memory: bool = True
    # CPU training: the compiled kernels (models.cpu_kernels: BatchNorm(+add)+ReLU as one kernel, the GEMM
    # convolutions' patches and transposes, the sum of a block input's bf16 gradients; a C++ compiler, built once)
    fused_kernels: bool = True
    # CUDA: cuDNN times its convolution algorithms for each new input shape and keeps the fastest (the shapes of a
    # training run repeat); false for bit-reproducible runs
    cudnn_benchmark: bool = True
    progress: bool = True  # a progress bar when the output is a terminal
    log_every: int = 10  # steps between metric lines (and progress-bar refreshes)
    tensorboard: bool = True  # also write TensorBoard scalars to RUN/tensorboard when tensorboard is installed
    knn_every: int = 5  # pretraining epochs between kNN evaluations on the validation split (0: start and end)
    knn_k: int = 200
    knn_temperature: float = 0.1
    # labelled training images (validation excluded) in the kNN memory bank (0: all, in memory only)
    knn_bank_size: int = 10000
    eval_batch_size: int = 1024
    checkpoint_every: int = 1  # epochs
    checkpoint_every_steps: int = 0  # also save every N optimiser steps (0: off)
    checkpoint_every_minutes: float = 0.0  # also save every M minutes of training (0: off)
    keep_checkpoints: int = 1  # step-numbered checkpoints kept beside last.pt (1: last.pt only)
    nonfinite: str = "stop"  # a NaN/inf loss: "stop" (with the last good checkpoint) or "skip" the step and count it
    step_timing: bool = False  # data_s, model_s, step_s in metrics.jsonl's train records (synchronises the device)

    def __post_init__(self) -> None:
        _check(
            self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:"),
            f"run.device = {self.device!r} is not one of: auto, cpu, cuda, cuda:N, mps",
        )
        _check_choice("run", "precision", self.precision, ("auto", "bf16", "fp32", "bf16-math", "tf32"))
        _check(self.threads >= 0, "run.threads must be >= 0 (0 keeps torch's default)")
        _check(self.log_every >= 1, "run.log_every must be >= 1")
        _check(self.knn_every >= 0, "run.knn_every must be >= 0")
        _check(self.knn_k >= 1, "run.knn_k must be >= 1")
        _check(self.knn_temperature > 0, "run.knn_temperature must be > 0")
        _check(self.knn_bank_size >= 0, "run.knn_bank_size must be >= 0")
        _check(self.eval_batch_size >= 1, "run.eval_batch_size must be >= 1")
        _check(self.checkpoint_every >= 1, "run.checkpoint_every must be >= 1")
        _check(self.checkpoint_every_steps >= 0, "run.checkpoint_every_steps must be >= 0 (0: off)")
        _check(self.checkpoint_every_minutes >= 0, "run.checkpoint_every_minutes must be >= 0 (0: off)")
        _check(self.keep_checkpoints >= 1, "run.keep_checkpoints must be >= 1")
        _check_choice("run", "nonfinite", self.nonfinite, ("stop", "skip"))


def _check_views(section: str, crop: str, crop_scale: tuple[float, float], flip_prob: float) -> None:
    _check_choice(section, "crop", crop, ("auto", "resized", "pad"))
    _check(0 < crop_scale[0] <= crop_scale[1] <= 1, f"{section}.crop_scale must satisfy 0 < lo <= hi <= 1")
    _check(0 <= flip_prob <= 1, f"{section}.flip_prob must be in [0, 1]")


def _check_budget(section: str, epochs: int, min_steps: int, batch_size: int, eval_every: int) -> None:
    _check(epochs >= 0, f"{section}.epochs must be >= 0 (0: as many as min_steps needs)")
    _check(min_steps >= 0, f"{section}.min_steps must be >= 0")
    _check(epochs > 0 or min_steps > 0, f"{section}: set epochs or min_steps (both are 0)")
    _check(batch_size >= 1, f"{section}.batch_size must be >= 1")
    _check(eval_every >= 0, f"{section}.eval_every must be >= 0")


def _finetune_optimizer() -> OptimizerConfig:
    # chosen on the package's validation split through the fine-tune stage: SGD 0.003 / 0.01 / 0.03 at 1 % labels,
    # width 0.25, seed 0 gave 79.2 / 81.1 / 80.9 (benchmarks/results/scale_study.jsonl); an earlier search on its own
    # training loop had also picked 0.01 among 7 (benchmarks/results/recipe_search.md)
    return OptimizerConfig(name="sgd", base_lr=0.01, lr_scaling="none", weight_decay=0.0, warmup_fraction=0.0)


def _distill_optimizer() -> OptimizerConfig:
    # Adam's steps do not grow with the 1/τ scale of a tempered softmax's gradients: SGD at τ = 0.1 diverged
    # (benchmarks/results/recipe_search.md); against AdamW and SGD at τ 1: benchmarks/scale_study.py's distill-recipes
    return OptimizerConfig(name="adamw", base_lr=1e-3, lr_scaling="none", weight_decay=0.0, warmup_fraction=0.0)


def _supervised_optimizer() -> OptimizerConfig:
    # chosen on the package's validation split through the supervised stage: SGD 0.03 / 0.1 / 0.3 at 1 % labels,
    # width 0.25, seed 0 gave 80.6 / 79.9 / 82.2 (benchmarks/results/scale_study.jsonl); 0.3 is the grid's edge
    return OptimizerConfig(name="sgd", base_lr=0.3, lr_scaling="none", weight_decay=5e-4, warmup_fraction=0.0)


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning on a labelled subset from projection-head layer ``head_layer`` (docs/recipe.md#fine-tuning).

    The budget is ``epochs`` over the subset, raised to at least ``min_steps`` optimiser steps so that 100 labels
    still get a real training run (``epochs = 0``: only that minimum, in whole epochs). The whole network is
    trained.
    """

    labels: str = "1%"  # "1%", "10%", a count ("600"), "N/class" ("10/class"), or a list file of image ids
    head_layer: int = 1
    epochs: int = 60  # the paper's 60 epochs at 1 % (about 540 steps for 600 labels at batch 64)
    min_steps: int = 600
    batch_size: int = 64  # capped at the subset size; the paper's 1024 suits ImageNet's 12,811-image 1 %
    # "resized": random resized crop at crop_scale (paper); "pad": pad-4 random crop; "auto": pad at <= 32 px, where a
    # crop of 8 % of a 28-px image leaves too little of it to learn a label from, else resized
    crop: str = "auto"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip_prob: float = 0.5
    eval_every: int = 0  # epochs between validation evaluations (0: only at the end)
    pretrained: str = ""  # pretraining run directory or checkpoint (the pipeline fills it in)
    optimizer: OptimizerConfig = field(default_factory=_finetune_optimizer)

    def __post_init__(self) -> None:
        _check(self.head_layer >= 0, "finetune.head_layer must be >= 0 (0 is the encoder output)")
        _check_budget("finetune", self.epochs, self.min_steps, self.batch_size, self.eval_every)
        _check_views("finetune", self.crop, self.crop_scale, self.flip_prob)


@dataclass(frozen=True)
class SupervisedConfig:
    """The supervised-only baseline: the fine-tuned network (same head layer) from scratch on the same labelled
    subset (``finetune.labels``), with its own recipe for training from scratch, chosen with the same search
    effort as fine-tuning's (benchmarks/scale_study.py)."""

    epochs: int = 100
    min_steps: int = 900
    batch_size: int = 64
    crop: str = "auto"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip_prob: float = 0.5
    eval_every: int = 0
    optimizer: OptimizerConfig = field(default_factory=_supervised_optimizer)

    def __post_init__(self) -> None:
        _check_budget("supervised", self.epochs, self.min_steps, self.batch_size, self.eval_every)
        _check_views("supervised", self.crop, self.crop_scale, self.flip_prob)


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation: ``linear`` (frozen encoder + linear classifier on cached features), ``knn``, or
    ``classifier`` (accuracy of a fine-tuned, supervised or distilled model)."""

    mode: str = "classifier"
    checkpoint: str = ""  # run directory or checkpoint to evaluate
    labels: str = "100%"  # labelled training images the linear classifier / kNN bank uses
    linear_epochs: int = 100
    linear_weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("evaluate", "mode", self.mode, ("linear", "knn", "classifier"))
        _check(self.linear_epochs >= 1, "evaluate.linear_epochs must be >= 1")
        _check(self.linear_weight_decay >= 0, "evaluate.linear_weight_decay must be >= 0")


@dataclass(frozen=True)
class DistillConfig:
    """Distillation on unlabeled images (docs/recipe.md#distillation): a frozen teacher's soft labels train a student.

    ``student = "teacher"`` distils into the teacher's architecture (self-distillation); ``"model"`` builds the
    student from ``[model]`` (big-to-small). ``temperature = 0`` picks the paper's 0.1 for self-distillation
    and 1.0 for big-to-small. The labelled term weighs ``1 - alpha``.
    """

    teacher: str = ""  # fine-tuned run directory or checkpoint (the pipeline fills it in)
    student: str = "teacher"
    student_init: str = "pretrained"  # pretrained (from ``student_pretrained``), or scratch
    student_pretrained: str = ""  # "": the pretraining run the teacher was fine-tuned from (its checkpoint says)
    temperature: float = 0.0
    alpha: float = 1.0
    epochs: int = 10
    min_steps: int = 0
    batch_size: int = 256
    crop: str = "auto"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip_prob: float = 0.5
    eval_every: int = 1
    optimizer: OptimizerConfig = field(default_factory=_distill_optimizer)

    def __post_init__(self) -> None:
        _check_choice("distill", "student", self.student, ("teacher", "model"))
        _check_choice("distill", "student_init", self.student_init, ("scratch", "pretrained"))
        _check(self.temperature >= 0, "distill.temperature must be >= 0 (0: 0.1 self-distillation, 1.0 big-to-small)")
        _check(0 <= self.alpha <= 1, "distill.alpha must be in [0, 1]")
        _check_budget("distill", self.epochs, self.min_steps, self.batch_size, self.eval_every)
        _check_views("distill", self.crop, self.crop_scale, self.flip_prob)

    def temperature_for(self, self_distillation: bool) -> float:
        return self.temperature or (0.1 if self_distillation else 1.0)


@dataclass(frozen=True)
class PipelineConfig:
    """What ``simclrv2 pipeline`` runs after pretraining, for every label subset."""

    label_fractions: tuple[str, ...] = ("1%", "10%")
    head_layers: tuple[int, ...] = (0, 1)  # fine-tune from each of these projection-head layers
    supervised: bool = True
    linear_eval: bool = True
    distill: bool = True  # distil the fine-tuned model at finetune.head_layer, for each subset
    embedding_samples: int = 2000  # validation images whose embeddings the report projects to 2-D

    def __post_init__(self) -> None:
        _check(bool(self.label_fractions), "pipeline.label_fractions must list at least one subset, e.g. [\"1%\"]")
        _check(all(j >= 0 for j in self.head_layers), "pipeline.head_layers must be >= 0")
        _check(self.embedding_samples >= 0, "pipeline.embedding_samples must be >= 0")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    run: RunConfig = field(default_factory=RunConfig)
