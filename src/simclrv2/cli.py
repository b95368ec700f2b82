"""Command line: parses argv into a config and calls one stage. No training logic lives here."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from simclrv2.config import load_config, option_defaults, to_toml
from simclrv2.config.shipped import resolve_config
from simclrv2.errors import SimCLRv2Error
from simclrv2.inference import commands as inference_commands
from simclrv2.logs import setup_logging
from simclrv2.tf_import import command as import_command


def _stage(module: str, function: str) -> Callable[[argparse.Namespace, Any], None]:
    """Imports a stage only when it runs, so ``--help`` stays fast."""

    def run_stage(args: argparse.Namespace, config: Any) -> None:
        stage = getattr(importlib.import_module(f"simclrv2.stages.{module}"), function)
        stage(config, args.run_dir, resume=args.resume, overwrite=args.overwrite)

    return run_stage


# name -> (help, runner, default run directory)
STAGES: dict[str, tuple[str, Callable[[argparse.Namespace, Any], None], str]] = {
    "pretrain": ("contrastive pretraining (stage 1)", _stage("pretrain", "pretrain"), "runs/pretrain"),
    "finetune": ("fine-tune a pretrained network on a labelled subset from a head layer (stage 2)",
                 _stage("finetune", "finetune"), "runs/finetune"),
    "supervised": ("the supervised-only baseline on the same labelled subset", _stage("supervised", "supervised"),
                   "runs/supervised"),
    "evaluate": ("linear, kNN or classifier evaluation on the validation and test splits",
                 _stage("evaluate", "evaluate"),
                 "runs/evaluate"),
    "distill": ("distil a fine-tuned teacher into a student on unlabeled data (stage 3)",
                _stage("distill", "distill"), "runs/distill"),
    "pipeline": ("pretrain, fine-tune, baseline, linear eval, distil and report, from one config",
                 _stage("pipeline", "pipeline"), "runs/pipeline"),
}


def _format_default(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


# What a default alone does not say; shown beside the option in --help.
OPTION_NOTES = {
    "data.image_size": "0: the dataset's own size (image folders: 96)",
    "finetune.labels": 'the labelled subset: a percentage "1%", a count "600", N/class ("60/class": 60 images of '
                       "each class), or a file listing image ids, one a line",
    "finetune.epochs": "raised to as many epochs as finetune.min_steps needs; 0: only that minimum",
}
CONFIG_EPILOG = ("Label subsets (finetune.labels): 1%, 10%, a count (600), N/class (60/class: N images of every "
                 "class) or a file of image ids. A classifier stage trains for its epochs (finetune.epochs, "
                 "default 60), raised to as many as its min_steps optimiser steps need; epochs = 0 means only "
                 "that minimum. --config also takes the name of a shipped config: demo, fashion_mnist_cpu, "
                 "fashion_mnist_gpu, cifar10_gpu.")


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file, or a shipped config's name such as demo (command-line "
                   "options override it)")
    group = p.add_argument_group("config options (section.key)")
    for dotted, default in option_defaults().items():
        note = f"{OPTION_NOTES[dotted]} " if dotted in OPTION_NOTES else ""
        group.add_argument(f"--{dotted}", dest=f"opt:{dotted}", metavar=type(default).__name__.upper(),
                           default=None, help=f"{note}(default: {_format_default(default)})".replace("%", "%%"))


def _add_stage_parser(sub: Any, name: str, help_text: str, default_run_dir: str) -> None:
    p = sub.add_parser(name, help=help_text, description=f"simclrv2 {name}: {help_text}. Every option below "
                       "can also be set in the TOML config file as [section] key = value.",
                       epilog=CONFIG_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       allow_abbrev=False)
    p.add_argument("--run-dir", type=Path, default=Path(default_run_dir),
                   help=f"where the run writes its files (default: {default_run_dir})")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir (or reuse it if finished)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --run-dir")
    _add_config_options(p)


def _download(args: argparse.Namespace) -> None:
    from simclrv2.data import download_dataset

    path = download_dataset(args.dataset, Path(args.dest) if args.dest else None)
    print(f"{args.dataset} is in {path}")


def _prepare(args: argparse.Namespace) -> None:
    from simclrv2.data.streaming.shards import prepare_shards

    out = prepare_shards(args.folder, args.out, shard_size=args.shard_size, split=args.split)
    print(f"shards: {out} (train on them with data.dataset = 'webdataset', data.data_dir = '{out}')")


def _info(args: argparse.Namespace, config: Any) -> None:
    from simclrv2.info import format_info, machine_info

    with contextlib.redirect_stdout(sys.stderr):  # log lines (the kernels' build) stay off the report, JSON or not
        info = machine_info(config)
    print(json.dumps(info, indent=2) if args.json else format_info(info))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simclrv2", description="SimCLRv2: self-supervised pretraining, "
                                     "fine-tuning from the projection head, and distillation.", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, _, default_dir) in STAGES.items():
        _add_stage_parser(sub, name, help_text, default_dir)
    inference_commands.add_parsers(sub)
    import_command.add_parser(sub)
    c = sub.add_parser("config", help="show the fully resolved config", allow_abbrev=False)
    show = c.add_subparsers(dest="action", required=True, metavar="ACTION").add_parser(
        "show", help="print the resolved TOML: defaults, then --config, then --section.key options",
        epilog=CONFIG_EPILOG, allow_abbrev=False)
    _add_config_options(show)
    i = sub.add_parser("info", help="what a run would do on this machine: precision, compiled kernels and where "
                       "each convolution pass runs", epilog=CONFIG_EPILOG, allow_abbrev=False)
    i.add_argument("--json", action="store_true", help="one JSON object, e.g. for a bug report or a script")
    _add_config_options(i)
    r = sub.add_parser("report", help="(re)build the HTML report of a run or pipeline directory", allow_abbrev=False)
    r.add_argument("run_dir", type=Path)
    d = sub.add_parser("download", help="download a dataset (needs internet) and verify its checksums",
                       allow_abbrev=False)
    d.add_argument("dataset", help="fashion-mnist, mnist, cifar10, cifar100 or stl10")
    d.add_argument("--dest", help="target folder (default: the cache, ~/.cache/simclrv2/DATASET)")
    p = sub.add_parser("prepare", help="write an image folder into WebDataset shards for streaming")
    p.add_argument("folder", type=Path, help="image folder (class sub-folders, or only images)")
    p.add_argument("out", type=Path, help="an empty or new folder for the .tar shards")
    p.add_argument("--shard-size", type=int, default=10_000, help="images per shard (default: 10000)")
    p.add_argument("--split", default="train", help="which split of FOLDER, when it has train/ and test/")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "download":
        _download(args)
        return 0
    if args.command == "prepare":
        _prepare(args)
        return 0
    if args.command == "report":
        from simclrv2.report import build_report

        print(f"report: {build_report(args.run_dir)}")
        return 0
    if args.command in inference_commands.COMMANDS:
        inference_commands.run_command(args)
        return 0
    if args.command == import_command.COMMAND:
        import_command.run_command(args)
        return 0
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt:") and v is not None}
    def config() -> Any:  # loaded where each command needs it, so a stage's option errors come first
        return load_config(resolve_config(args.config) if args.config else None, overrides)

    if args.command == "config":
        print(to_toml(config()), end="")
        return 0
    if args.command == "info":
        _info(args, config())
        return 0
    if args.resume and args.overwrite:
        raise SimCLRv2Error("--resume and --overwrite exclude each other: choose one")
    STAGES[args.command][1](args, config())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    try:
        return run(argv)
    except SimCLRv2Error as exc:
        print(f"simclrv2: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("simclrv2: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
