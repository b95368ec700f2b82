"""Recipe search for the Fashion-MNIST demo (issue 12): which optimiser, learning rate, augmentation and
budget make the supervised baseline strong and SimCLRv2 (pretrain -> fine-tune -> distill) beat it.

Built only from the library's blocks (data, models, augment, losses, optim, runtime, stages.features, knn)
so a chosen recipe transfers to the stages as is. The test split is never read: every accuracy is top-1 on
a class-balanced, seeded validation set of 5,000 TRAINING images (500/class); labelled subsets are drawn
class-balanced from the other 55,000; pretraining and distillation see all 60,000 images without labels.
Each finished run appends one JSON line to ``benchmarks/results/recipe_search.jsonl``; checkpoints go to
``benchmarks/results/ckpt/`` (not committed). Phases, each a subcommand running its named configurations:

    python benchmarks/recipe_search.py supervised                 # phase 1, 600 labels
    python benchmarks/recipe_search.py pretrain --only lars-t0.5   # phase 2
    python benchmarks/recipe_search.py finetune --pretrained lars-t0.5
    python benchmarks/recipe_search.py distill --teacher ft-adamw-3e-4 --pretrained lars-t0.5
    python benchmarks/recipe_search.py supervised --per-class 10 --only adam-l2-1e-3   # phase 5
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from simclrv2.augment import AugmentConfig, crop_flip, pad_crop_flip, simclr_views
from simclrv2.data import ImageDataset, load_dataset
from simclrv2.eval.features import classifier_logits, encoder_features
from simclrv2.eval.knn import knn_accuracy
from simclrv2.eval.metrics import accuracy
from simclrv2.losses import distillation_loss, nt_xent_loss
from simclrv2.models import Classifier, SimCLRModel, build_simclr_model
from simclrv2.optim import LARS, lr_at, param_groups, scaled_learning_rate, set_lr, warmup_steps_for
from simclrv2.runtime import autocast

RESULTS = Path(__file__).resolve().parent / "results"
DEVICE = torch.device("cpu")
PRECISION = "auto"  # bf16 autocast where the CPU has fast bf16 kernels
VAL_PER_CLASS, BANK_SIZE = 500, 10_000


@dataclass(frozen=True)
class Opt:
    """One optimiser setting: peak lr = scaled_learning_rate(base_lr, batch, scaling), cosine to 0."""

    name: str  # lars, sgd, adam (L2 added to the gradient), adamw (decoupled decay)
    base_lr: float
    scaling: str = "none"  # none, sqrt, linear
    weight_decay: float = 0.0
    warmup: float = 0.0  # fraction of the steps
    momentum: float = 0.9


@dataclass(frozen=True)
class Run:
    """A classifier-training configuration (supervised, fine-tune or distillation)."""

    opt: Opt
    steps: int
    batch: int = 64
    crop: str = "pad4"  # pad4 (pad 4 + random crop + flip) or rrcLO (random resized crop scale (LO, 1) + flip)
    head_layer: int = 1
    temperature: float = 1.0  # distillation only


@dataclass(frozen=True)
class Pretrain:
    opt: Opt
    steps: int = 936  # 4 epochs of 234 steps at batch 256
    batch: int = 256
    temperature: float = 0.5
    crop_scale: tuple[float, float] = (0.08, 1.0)


LARS_TODAY = Opt("lars", 0.075, "sqrt", 1e-4, 0.05)
SUPERVISED = {  # 900 steps at batch 64 = 96 epochs of 600 images
    "adam-l2-1e-3": Run(Opt("adam", 1e-3, weight_decay=5e-4), 900),
    "adamw-1e-3": Run(Opt("adamw", 1e-3, weight_decay=5e-4), 900),
    "adamw-3e-3": Run(Opt("adamw", 3e-3, weight_decay=5e-4), 900),
    "adamw-3e-3-wd0.05": Run(Opt("adamw", 3e-3, weight_decay=0.05), 900),
    "sgd-0.1": Run(Opt("sgd", 0.1, weight_decay=5e-4), 900),
    "lars-today": Run(LARS_TODAY, 900),
    "adam-l2-1e-3-rrc0.25": Run(Opt("adam", 1e-3, weight_decay=5e-4), 900, crop="rrc0.25"),
    "sgd-0.1-rrc0.25": Run(Opt("sgd", 0.1, weight_decay=5e-4), 900, crop="rrc0.25"),
}
PRETRAIN = {
    "lars-t0.5": Pretrain(LARS_TODAY),
    "lars-t0.2": Pretrain(LARS_TODAY, temperature=0.2),
    "adamw-t0.5": Pretrain(Opt("adamw", 1e-3, "linear", 1e-5, 0.05)),
    "adamw-t0.2": Pretrain(Opt("adamw", 1e-3, "linear", 1e-5, 0.05), temperature=0.2),
}
FINETUNE = {  # 540 steps at batch 64 = 58 epochs of 600 images
    "ft-lars-today": Run(Opt("lars", 0.02, "sqrt"), 540),
    "ft-lars-x20": Run(Opt("lars", 0.4, "sqrt"), 540),
    "ft-sgd-0.01": Run(Opt("sgd", 0.01), 540),
    "ft-sgd-0.05": Run(Opt("sgd", 0.05), 540),
    "ft-adamw-1e-4": Run(Opt("adamw", 1e-4), 540),
    "ft-adamw-3e-4": Run(Opt("adamw", 3e-4), 540),
    "ft-adamw-1e-3": Run(Opt("adamw", 1e-3), 540),
}
DISTILL = {  # 468 steps at batch 256 = 2 epochs of 60,000 images
    "kd-adamw-3e-4-t1": Run(Opt("adamw", 3e-4), 468, batch=256, temperature=1.0),
    "kd-adamw-3e-4-t0.1": Run(Opt("adamw", 3e-4), 468, batch=256, temperature=0.1),
    "kd-adamw-1e-3-t1": Run(Opt("adamw", 1e-3), 468, batch=256, temperature=1.0),
    "kd-sgd-0.05-t1": Run(Opt("sgd", 0.05), 468, batch=256, temperature=1.0),
    "kd-sgd-0.05-t0.1": Run(Opt("sgd", 0.05), 468, batch=256, temperature=0.1),
    "kd-lars-t1": Run(Opt("lars", 0.075, "sqrt", 1e-4, 0.05), 468, batch=256, temperature=1.0),
    "kd-lars-t0.1": Run(Opt("lars", 0.075, "sqrt", 1e-4, 0.05), 468, batch=256, temperature=0.1),
}


# --- data ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Splits:
    train: ImageDataset  # all 60,000 (unlabeled pool)
    val: ImageDataset  # 500/class
    rest: torch.Tensor  # indices of the other training images, shuffled per class


def load_splits(seed: int = 0) -> Splits:
    """Validation = the first 500 of each class in a seeded shuffle; the rest keeps that shuffled order."""
    train = load_dataset("fashion-mnist", split="train")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=generator)
    val, rest = [], []
    for c in range(train.num_classes):
        members = order[train.labels[order] == c]
        val.append(members[:VAL_PER_CLASS])
        rest.append(members[VAL_PER_CLASS:])
    return Splits(train, train.subset(torch.cat(val)), torch.stack(rest))  # rest: (classes, 5500)


def labelled(splits: Splits, per_class: int) -> ImageDataset:
    """The first ``per_class`` of each class's shuffled remainder: 10/class is inside 60/class."""
    return splits.train.subset(splits.rest[:, :per_class].reshape(-1))


def knn_bank(splits: Splits) -> ImageDataset:
    """10,000 labelled non-validation images, evenly over the classes."""
    per_class = BANK_SIZE // splits.train.num_classes
    return splits.train.subset(splits.rest[:, -per_class:].reshape(-1))


def batches(n: int, batch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless index batches over successive shuffles of n items (a batch may straddle two shuffles)."""
    pool = torch.empty(0, dtype=torch.long)
    while True:
        while len(pool) < batch:
            pool = torch.cat([pool, torch.randperm(n, generator=generator)])
        yield pool[:batch]
        pool = pool[batch:]


def augmentation(crop: str) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    if crop == "pad4":
        return lambda x, g: pad_crop_flip(x, g, padding=4)
    if crop.startswith("rrc"):
        scale = (float(crop[3:]), 1.0)
        return lambda x, g: crop_flip(x, g, crop_scale=scale)
    raise ValueError(f"unknown crop {crop!r}")


# --- optimisation ----------------------------------------------------------------------------------------

def make_optimizer(model: nn.Module, opt: Opt, batch: int,
                   plain: tuple[nn.Module, ...] = ()) -> tuple[torch.optim.Optimizer, float]:
    """The optimiser over ``param_groups`` (no decay on BN and biases) and its peak learning rate."""
    peak = opt.base_lr if opt.scaling == "none" else scaled_learning_rate(opt.base_lr, batch, opt.scaling)
    groups = param_groups(model, opt.weight_decay, plain=plain if opt.name == "lars" else ())
    if opt.name == "lars":
        return LARS(groups, lr=peak, momentum=opt.momentum, weight_decay=opt.weight_decay), peak
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=peak, momentum=opt.momentum), peak
    if opt.name == "adam":
        return torch.optim.Adam(groups, lr=peak), peak
    if opt.name == "adamw":
        return torch.optim.AdamW(groups, lr=peak), peak
    raise ValueError(f"unknown optimiser {opt.name!r}")


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Conv and linear weights (ndim > 1) of the network, without the zero-initialised classifier."""
    return {k: p.detach().clone() for k, p in model.named_parameters() if p.ndim > 1 and "classifier" not in k}


def moved(model: nn.Module, start: dict[str, torch.Tensor]) -> float:
    """||w - w0|| / ||w0|| over the weights ``weights`` picks."""
    now = weights(model)
    diff = sum(float((now[k].float() - w0.float()).pow(2).sum()) for k, w0 in start.items())
    return math.sqrt(diff / sum(float(w0.float().pow(2).sum()) for w0 in start.values()))


def train_loop(model: nn.Module, opt: Opt, steps: int, batch: int, n: int,
               loss_of: Callable[[torch.Tensor, torch.Generator], torch.Tensor], seed: int,
               plain: tuple[nn.Module, ...] = ()) -> dict:
    """``steps`` optimiser steps of ``loss_of(indices, generator)`` at lr_at(step); returns the run's cost."""
    optimizer, peak = make_optimizer(model, opt, batch, plain)
    warmup = warmup_steps_for(steps, opt.warmup)
    generator = torch.Generator().manual_seed(seed)
    start, tick = weights(model), time.perf_counter()
    model.train()
    for step, index in zip(range(steps), batches(n, batch, generator), strict=False):
        set_lr(optimizer, lr_at(step, steps, peak, warmup))
        loss = loss_of(index, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step + 1}/{steps} loss {loss.item():.4f} ({time.perf_counter() - tick:.0f} s)",
                  flush=True)
    return {"steps": steps, "peak_lr": peak, "train_s": round(time.perf_counter() - tick, 1),
            "moved": round(moved(model, start), 4)}


def val_top1(model: nn.Module, splits: Splits) -> float:
    logits = classifier_logits(model, splits.val, DEVICE, 1024, PRECISION)
    return accuracy(logits, splits.val.labels)


def classifier_run(model: Classifier, run: Run, data: ImageDataset, seed: int) -> dict:
    """Cross-entropy training on ``data`` with the run's augmentation."""
    augment = augmentation(run.crop)

    def loss_of(index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with autocast(DEVICE, PRECISION):
            logits = model(augment(data.images[index], generator))
        return F.cross_entropy(logits.float(), data.labels[index])

    return train_loop(model, run.opt, run.steps, min(run.batch, len(data)), len(data), loss_of, seed,
                      plain=(model.classifier,))


# --- phases ----------------------------------------------------------------------------------------------

def ckpt() -> Path:
    return RESULTS / "ckpt"


def new_simclr(seed: int) -> SimCLRModel:
    torch.manual_seed(seed)
    return build_simclr_model(18, width_multiplier=0.25, cifar_stem=True, in_channels=1, head_layers=3)


def pretrained(name: str) -> SimCLRModel:
    model = new_simclr(0)
    model.load_state_dict(torch.load(ckpt() / f"pretrain-{name}.pt", weights_only=True))
    return model


def phase_supervised(name: str, run: Run, splits: Splits, per_class: int, seed: int) -> dict:
    model = Classifier.from_simclr(new_simclr(seed), run.head_layer, 10)
    cost = classifier_run(model, run, labelled(splits, per_class), seed)
    return {**cost, "val_top1": val_top1(model, splits)}


def phase_pretrain(name: str, cfg: Pretrain, splits: Splits, seed: int) -> dict:
    model = new_simclr(seed)
    images = splits.train.images
    augment = AugmentConfig(crop_scale=cfg.crop_scale)

    def loss_of(index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        view1, view2 = simclr_views(images[index], augment, generator)
        with autocast(DEVICE, PRECISION):
            z1, z2 = model(torch.cat([view1, view2])).chunk(2)  # (N, 128) each
        return nt_xent_loss(z1.float(), z2.float(), cfg.temperature)

    cost = train_loop(model, cfg.opt, cfg.steps, cfg.batch, len(images), loss_of, seed)
    ckpt().mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), ckpt() / f"pretrain-{name}.pt")
    tick = time.perf_counter()
    bank = knn_bank(splits)
    bank_features = encoder_features(model.encoder, bank, DEVICE, 1024, PRECISION)
    val_features = encoder_features(model.encoder, splits.val, DEVICE, 1024, PRECISION)
    knn = knn_accuracy(bank_features, bank.labels, val_features, splits.val.labels, 10, k=200, temperature=0.1)
    return {**cost, "knn_top1": knn, "knn_s": round(time.perf_counter() - tick, 1)}


def phase_finetune(name: str, run: Run, splits: Splits, per_class: int, seed: int, source: str) -> dict:
    model = Classifier.from_simclr(pretrained(source), run.head_layer, 10)
    cost = classifier_run(model, run, labelled(splits, per_class), seed)
    ckpt().mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), ckpt() / f"finetune-{name}-h{run.head_layer}-{per_class}pc-s{seed}.pt")
    return {**cost, "val_top1": val_top1(model, splits)}


def phase_distill(name: str, run: Run, splits: Splits, seed: int, teacher_file: str, source: str,
                  student_init: str) -> dict:
    teacher = Classifier.from_simclr(new_simclr(0), 1, 10)
    teacher.load_state_dict(torch.load(ckpt() / teacher_file, weights_only=True))
    teacher.eval().requires_grad_(False)
    base = pretrained(source) if student_init == "pretrained" else new_simclr(seed)
    student = Classifier.from_simclr(base, run.head_layer, 10)
    augment, images = augmentation(run.crop), splits.train.images

    def loss_of(index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        views = augment(images[index], generator)  # the same views for teacher and student
        with autocast(DEVICE, PRECISION):
            with torch.no_grad():
                target = teacher(views)
            logits = student(views)
        return distillation_loss(logits.float(), target.float(), run.temperature)

    cost = train_loop(student, run.opt, run.steps, run.batch, len(images), loss_of, seed,
                      plain=(student.classifier,))
    return {**cost, "val_top1": val_top1(student, splits), "teacher_val_top1": val_top1(teacher, splits)}


# --- driver ----------------------------------------------------------------------------------------------

def record(line: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "recipe_search.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line), flush=True)


def main() -> None:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=("supervised", "pretrain", "finetune", "distill"))
    parser.add_argument("--only", nargs="*", help="configuration names (default: all of the phase)")
    parser.add_argument("--per-class", type=int, default=60, help="labels per class (60 = 1 %%)")
    parser.add_argument("--seed", type=int, default=0)
    # 1, not 2: on two cores shared with other jobs, two OpenMP threads per process spin at barriers while the
    # other is descheduled; a batch-64 step measured 0.85 s with 2 threads and 0.09 s with 1.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pretrained", default="lars-t0.5", help="phase-2 configuration to start from")
    parser.add_argument("--teacher", default="", help="fine-tuned checkpoint file name under ckpt/")
    parser.add_argument("--student-init", choices=("pretrained", "scratch"), default="pretrained")
    parser.add_argument("--head-layer", type=int, default=None, help="override the head layer")
    parser.add_argument("--crop", default=None, help="override the crop (pad4, rrc0.25, ...)")
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON lines and checkpoints go")
    args = parser.parse_args()
    RESULTS = args.results
    torch.set_num_threads(args.threads)
    table = {"supervised": SUPERVISED, "pretrain": PRETRAIN, "finetune": FINETUNE, "distill": DISTILL}[args.phase]
    names = args.only or list(table)
    splits = load_splits()
    for name in names:
        cfg = table[name]
        overrides = {k: v for k, v in (("head_layer", args.head_layer), ("crop", args.crop),
                                       ("steps", args.steps)) if v is not None and hasattr(cfg, k)}
        cfg = replace(cfg, **overrides)
        print(f"== {args.phase} {name}: {cfg}", flush=True)
        tick = time.perf_counter()
        if args.phase == "supervised":
            result = phase_supervised(name, cfg, splits, args.per_class, args.seed)
        elif args.phase == "pretrain":
            result = phase_pretrain(name, cfg, splits, args.seed)
        elif args.phase == "finetune":
            result = phase_finetune(name, cfg, splits, args.per_class, args.seed, args.pretrained)
        else:
            result = phase_distill(name, cfg, splits, args.seed, args.teacher, args.pretrained, args.student_init)
        extra = {"per_class": args.per_class} if args.phase in ("supervised", "finetune") else {}
        if args.phase in ("finetune", "distill"):
            extra["pretrained"] = args.pretrained
        if args.phase == "distill":
            extra.update(teacher=args.teacher, student_init=args.student_init)
        record({"phase": args.phase, "name": name, "seed": args.seed, **extra, **result,
                "wall_s": round(time.perf_counter() - tick, 1), "threads": args.threads, "config": asdict(cfg)})


if __name__ == "__main__":
    main()
