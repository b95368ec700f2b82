"""The training loop shared by fine-tuning, the supervised baseline and distillation.

All three train a :class:`~simclrv2.models.Classifier` on in-memory images with crop + flip augmentation
(SPEC), LARS and a per-step learning rate; they differ only in the loss of a batch, which is passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from simclrv2 import dist
from simclrv2.augment import crop_flip
from simclrv2.checkpoint import MetricsLog
from simclrv2.data import ImageDataset
from simclrv2.errors import Interrupted, SimCLRv2Error
from simclrv2.models.global_bn import convert_to_global_bn
from simclrv2.optim import LARS, lr_at, param_groups, scaled_learning_rate, set_lr, warmup_steps_for
from simclrv2.runtime import autocast, generator_for, prepare_model
from simclrv2.stages.features import classifier_top1
from simclrv2.stages.resume import step_seed

# loss(logits (B, C), indices into the training images (B,), augmented views (B, C, H, W)) -> scalar
BatchLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Recipe:
    """Optimisation settings of one classifier-training stage."""

    epochs: int
    batch_size: int
    base_lr: float
    lr_scaling: str
    warmup_fraction: float
    weight_decay: float
    momentum: float
    crop_scale: tuple[float, float]
    flip_prob: float
    eval_every: int
    # learning-rate factor of the parameters LARS does not adapt (classifier, BN, biases): distillation's
    # tempered softmax scales their gradients by 1/τ, and only trust-ratio-adapted weights are immune to that
    plain_lr_scale: float = 1.0


@dataclass(frozen=True)
class Progress:
    """Where training stands, handed to the checkpoint callback."""

    step: int
    epoch: int
    test_top1: float | None


def effective_batch(batch_size: int, num_images: int, world: int) -> int:
    """The global batch: capped at the data size and rounded down to a multiple of the process count."""
    batch = min(batch_size, num_images)
    batch -= batch % world
    if batch < world:
        raise SimCLRv2Error(f"{num_images} training images are too few for {world} processes")
    return batch


def train_classifier(
    model: nn.Module,
    images: torch.Tensor,
    batch_loss: BatchLoss,
    recipe: Recipe,
    *,
    run,
    device: torch.device,
    log: MetricsLog,
    stage: str,
    test: ImageDataset | None,
    save: Callable[[Progress, nn.Module, torch.optim.Optimizer], None],
    optimizer_state: dict | None = None,
    start_step: int = 0,
) -> tuple[nn.Module, float | None]:
    """Trains ``model``; returns it (its BNs made global when distributed) and the final test top-1 (None
    without a labelled test set)."""
    world = dist.world_size()
    num_images = images.shape[0]
    batch = effective_batch(recipe.batch_size, num_images, world)
    local_batch = batch // world
    steps_per_epoch = max(1, num_images // batch)
    total = steps_per_epoch * recipe.epochs
    peak_lr = scaled_learning_rate(recipe.base_lr, batch, recipe.lr_scaling)
    warmup = warmup_steps_for(total, recipe.warmup_fraction)

    if world > 1:
        model = convert_to_global_bn(model)
    model = prepare_model(model, device, run.channels_last)
    # the linear classifier is excluded from weight decay and trust-ratio adaptation, as in the reference
    groups = param_groups(model, recipe.weight_decay, plain=[model.classifier])
    groups[1]["lr_scale"] = recipe.plain_lr_scale
    optimizer = LARS(groups, lr=peak_lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    trained = (
        dist.wrap_ddp(model, device) if world > 1 else model
    )
    forward = torch.compile(trained) if run.compile else trained
    images = images.to(device)
    generator = generator_for(device, run.seed)
    main = dist.is_main()
    if main:
        print(f"{stage}: {num_images} images, {recipe.epochs} epochs of {steps_per_epoch} steps, batch {batch}, "
              f"peak lr {peak_lr:.3g}", flush=True)

    def evaluate(epoch: int, step: int) -> float | None:
        if test is None or test.labels is None:
            return None
        top1 = None
        if main:
            top1 = classifier_top1(model, test, device, run.eval_batch_size, run.precision)
            log.write(event="eval", stage=stage, epoch=epoch, step=step, test_top1=top1)
            print(f"{stage}: test top-1 after {epoch} epochs: {top1:.4f}", flush=True)
        dist.barrier()
        return top1

    step = start_step
    top1 = None
    model.train()
    try:
        for epoch in range(start_step // steps_per_epoch, recipe.epochs):
            order = dist.shard_indices(num_images, epoch, run.seed, batch_size=local_batch).to(device)
            first = step - epoch * steps_per_epoch
            bar = tqdm(range(first, steps_per_epoch), desc=f"{stage} {epoch + 1}/{recipe.epochs}",
                       disable=not (run.progress and main), leave=False, dynamic_ncols=True)
            tick, tick_step = time.perf_counter(), step
            for i in bar:
                generator.manual_seed(step_seed(run.seed, dist.rank(), step))
                index = order[i * local_batch : (i + 1) * local_batch]
                views = crop_flip(images[index], generator, crop_scale=recipe.crop_scale,
                                  flip_prob=recipe.flip_prob, channels_last=run.channels_last)
                lr = lr_at(step, total, peak_lr, warmup)
                set_lr(optimizer, lr)
                with autocast(device, run.precision):
                    logits = forward(views)
                loss = batch_loss(logits.float(), index, views)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                if step % run.log_every == 0 or i == steps_per_epoch - 1:
                    images_per_s = (step - tick_step) * batch / max(time.perf_counter() - tick, 1e-9)
                    tick, tick_step = time.perf_counter(), step
                    value = dist.all_reduce_mean(loss.detach()).item()
                    if value != value:  # NaN
                        raise SimCLRv2Error(f"{stage}: loss became NaN at step {step}; lower the learning rate")
                    bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.3g}")
                    log.write(event="train", stage=stage, epoch=epoch + (i + 1) / steps_per_epoch, step=step,
                              loss=value, lr=lr, images_per_s=images_per_s)
            bar.close()
            done = epoch + 1
            if recipe.eval_every and done % recipe.eval_every == 0 and done < recipe.epochs:
                top1 = evaluate(done, step)
                save(Progress(step, done, top1), model, optimizer)
    except KeyboardInterrupt:
        save(Progress(step, step // steps_per_epoch, top1), model, optimizer)
        raise Interrupted(f"{stage} interrupted at step {step}; checkpoint saved, continue with --resume") from None
    return model, evaluate(recipe.epochs, step)
