"""The ``import`` command: its arguments, and the lines it prints about what it kept and skipped."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

COMMAND = "import"
_USES = {
    "simclr": "a pretraining run: simclrv2 finetune --finetune.pretrained {run}, embed --checkpoint {run}, "
              "distill --distill.student_pretrained {run}",
    "classifier": "a classifier run: simclrv2 predict --checkpoint {run} IMAGES, export --checkpoint {run}, "
                  "distill --distill.teacher {run}",
}


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        COMMAND, allow_abbrev=False, help="turn one of the authors' TensorFlow SimCLRv2 checkpoints into a run",
        description="Reads a SimCLRv2 network released by the paper's authors, as a TF1 checkpoint "
        "(model.ckpt-N, its .index file or its folder) or a TF2 SavedModel folder, recognises its depth, width "
        "and Selective Kernels from the variables, and writes an ordinary run: a pretraining run (encoder and "
        "projection head) or a classifier run (with the ImageNet class names). Every variable is mapped or "
        "skipped by a printed rule (optimiser slots, EMA copies, step counters). Needs pip install "
        "'simclrv2[tf]'.")
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                   help="e.g. r50_1x_sk0/model.ckpt-250228 or r50_1x_sk0/saved_model")
    p.add_argument("--output", type=Path, required=True, metavar="RUN", help="the run directory to write")
    p.add_argument("--what", choices=("pretrained", "classifier"),
                   help="the encoder with its projection head (pretrained) or the fine-tuned classifier; default: "
                   "from the authors' folder name (pretrained/, finetuned_*, supervised/, distill_*), else "
                   "pretrained")
    p.add_argument("--head-layer", type=int, metavar="J",
                   help="the projection-head layer the classifier reads (0: the encoder output); default: the "
                   "paper's for the folder (finetuned_1pct/10pct: 1, finetuned_100pct, supervised, pretrained: 0)")
    p.add_argument("--image-size", type=int, metavar="PX",
                   help="the input side the network expects (default: 224, the released networks'; 32 with the "
                   "CIFAR stem)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --output")


def run_command(args: argparse.Namespace) -> None:
    from simclrv2.errors import SimCLRv2Error
    from simclrv2.tf_import.convert import import_checkpoint

    if args.image_size is not None and args.image_size < 1:
        raise SimCLRv2Error(f"--image-size must be >= 1, got {args.image_size}")
    result = import_checkpoint(args.checkpoint, args.output, what=args.what, head_layer=args.head_layer,
                               image_size=args.image_size, overwrite=args.overwrite)
    network = result.spec.describe()
    if result.kind == "classifier":
        network += f", classifier on head layer {result.head_layer} over {len(result.classes)} classes"
    print(f"read {result.format} {result.source}: {network}; {result.mapped} variables mapped")
    for rule, count in result.skipped.items():
        print(f"skipped by rule: {count} {rule}")
    print(f"wrote {result.run_dir}: {_USES[result.kind].format(run=result.run_dir)}")
