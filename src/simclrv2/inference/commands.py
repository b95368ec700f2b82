"""The ``predict``, ``embed`` and ``export`` commands: their arguments, and the call each one makes."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from simclrv2.inference.export import FORMATS, ONNX_OPSET
from simclrv2.inference.model import PRECISIONS

COMMANDS = ("predict", "embed", "export")
_IMAGES_HELP = ("a folder of images (sub-folders included; no labels needed), one image file, or DATASET:SPLIT "
                "such as fashion-mnist:test")
_CHECKPOINT_HELP = "a run directory, a checkpoint file or a folder written by `simclrv2 export`"


def _common(p: argparse.ArgumentParser, images: bool = True) -> None:
    p.add_argument("--checkpoint", required=True, type=Path, metavar="RUN", help=_CHECKPOINT_HELP)
    if images:
        p.add_argument("images", metavar="FOLDER_OR_SPLIT", help=_IMAGES_HELP)
        p.add_argument("--data-dir", help="where DATASET's files are (default: searched as for training)")
        p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
        p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="fp32 (default: full precision, whatever the run trained in), bf16 autocast (faster "
                       "where the CPU or GPU has bf16; probabilities move by ~0.001), or auto (bf16 where the "
                       "hardware runs it fast, as training's default)")
        p.add_argument("--fused-kernels", action=argparse.BooleanOptionalAction, default=True,
                       help="on CPU, run the package's compiled kernels where they are faster than PyTorch's ops, "
                       "as training does (compiled once per machine, ~30-60 s, then cached; default: on)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("predict", allow_abbrev=False, help="class probabilities for a folder of images or a split",
                       description="Predicts the class of every image with a fine-tuned, supervised or distilled "
                       "run. CSV columns: image (file path relative to the folder, or the split's id), "
                       "prediction, probability, then p_CLASS for each class (or class_i, probability_i with "
                       "--top-k). A progress bar is shown only on a terminal.")
    _common(p)
    p.add_argument("--top-k", type=int, default=0, metavar="K",
                   help="write only the K most probable classes (default: 0, every class)")
    p.add_argument("--output", type=Path, metavar="FILE", help="FILE.csv or FILE.jsonl (default: CSV on stdout)")

    e = sub.add_parser("embed", allow_abbrev=False, help="features of a folder of images or a split (.npy)",
                       description="Writes features.npy (N x D float32), index.txt (the image of each row) and "
                       "embedding.json. With --knn, also knn.csv: each image labelled by a cosine kNN vote "
                       "over the features of labelled images, without any training.")
    _common(e)
    e.add_argument("--output", type=Path, required=True, metavar="DIR", help="folder for the files")
    e.add_argument("--layer", type=int, default=0,
                   help="0: encoder output (default); j: after projection-head layer j")
    e.add_argument("--normalize", action="store_true", help="L2-normalise each feature vector")
    e.add_argument("--knn", metavar="LABELLED", help="labelled images: a folder with one sub-folder per class, "
                   "or DATASET:SPLIT such as fashion-mnist:train")
    e.add_argument("--knn-k", type=int, default=200, help="neighbours that vote (default: 200)")
    e.add_argument("--knn-temperature", type=float, default=0.1, help="vote weight exp(sim / T) (default: 0.1)")

    x = sub.add_parser("export", allow_abbrev=False, help="write a run's network as safetensors, ONNX, torch.export",
                       description="Writes model.json (architecture, head layers, classes, and the input the "
                       "network expects: size, channels, values in [0, 1], mean/std none, the 87.5 % centre crop "
                       f"above 32 px) and each format: model.safetensors, model.onnx (opset {ONNX_OPSET}, dynamic "
                       "batch; needs pip install 'simclrv2[onnx]'), model.pt2 (torch.export; load with "
                       "torch.export.load(path).module()). `simclrv2.load(DIR)` reads the folder back.")
    _common(x, images=False)
    x.add_argument("--output", type=Path, required=True, metavar="DIR", help="folder for the files")
    x.add_argument("--what", choices=("encoder", "classifier"),
                   help="the classifier (logits; the default for fine-tuned runs) or the encoder (features)")
    x.add_argument("--layer", type=int,
                   help="encoder: the head layer whose output is exported (default: 0, the encoder output)")
    x.add_argument("--format", default=",".join(FORMATS),
                   help=f"comma-separated, from {', '.join(FORMATS)} (default: all)")


def run_command(args: argparse.Namespace) -> None:
    from simclrv2.inference import loading
    from simclrv2.runtime import resolve_precision, set_fp32_math

    model = loading.load(args.checkpoint, device=args.device)
    if args.command == "export":  # torch.export traces PyTorch's ops whatever the switch says
        _export(model, args)
        return
    # the command owns its process: fp32 means exact fp32 here too (PyTorch's default runs cuDNN's in TF32)
    set_fp32_math(resolve_precision(args.precision, model.device))
    data = sys.stdout
    csv_on_stdout = args.command == "predict" and args.output is None
    # stdout carrying the CSV holds nothing else: log lines (the kernels' build among them) go to stderr meanwhile
    with contextlib.redirect_stdout(sys.stderr) if csv_on_stdout else contextlib.nullcontext():
        if args.command == "predict":
            _predict(model, args, data)
        else:
            _embed(model, args)


def _predict(model, args: argparse.Namespace, stdout) -> None:
    """The CSV goes to ``stdout`` (the real one, taken before any redirect) when there is no ``--output``."""
    from simclrv2.inference.predict import predict
    from simclrv2.inference.sources import open_images

    source = open_images(args.images, model.preprocess, args.data_dir)
    if args.output is None:
        predict(model, source, None, top_k=args.top_k, batch_size=args.batch_size, stdout=stdout,
                precision=args.precision, fused_kernels=args.fused_kernels)
        return
    count = predict(model, source, args.output, top_k=args.top_k, batch_size=args.batch_size,
                    precision=args.precision, fused_kernels=args.fused_kernels)
    print(f"predicted {count} images: {args.output}", file=sys.stderr)


def _embed(model, args: argparse.Namespace) -> None:
    from simclrv2.inference.embed import KnnOptions, embed
    from simclrv2.inference.sources import open_images, open_labelled

    source = open_images(args.images, model.preprocess, args.data_dir)
    knn = None
    if args.knn:
        knn = KnnOptions(open_labelled(args.knn, model.preprocess, args.data_dir), args.knn_k, args.knn_temperature)
    written = embed(model, source, args.output, layer=args.layer, normalize=args.normalize,
                    batch_size=args.batch_size, knn=knn, precision=args.precision, fused_kernels=args.fused_kernels)
    count = len(written["index"].read_text().splitlines())  # unreadable images were skipped
    print(f"embedded {count} images: {', '.join(str(p) for p in written.values())}")


def _export(model, args: argparse.Namespace) -> None:
    from simclrv2.errors import SimCLRv2Error
    from simclrv2.inference.export import export_model, parse_formats

    formats = parse_formats(args.format)
    what = args.what or ("classifier" if model.classes else "encoder")
    if what == "classifier":
        if not model.classes:
            raise SimCLRv2Error(f"{model.spec.source} has no classifier (a pretraining run): use --what encoder")
        exported = model.truncated(args.layer)
    else:
        exported = model.truncated(args.layer or 0, classifier=False)
    written = export_model(exported, args.output, formats)
    print(f"exported the {what}: {', '.join(str(p) for p in written.values())}, {args.output / 'model.json'}")
