"""From a TensorFlow checkpoint to an ordinary run of ours: recognise, map every variable, write the run.

A pretraining run (kind "simclr": encoder + projection head) serves ``finetune --finetune.pretrained``,
``embed`` and ``distill --distill.student_pretrained``; a classifier run (kind "classifier": encoder, head
layers 1…j, linear classifier) serves ``predict``, ``evaluate``, ``export`` and ``distill --distill.teacher``.
Both record the TF pooling the network needs (``tf_pooling``) and the input the released networks expect:
224 px RGB in [0, 1], no mean/std, the 87.5 % centre crop (the authors' ``preprocess_image`` at evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from simclrv2.checkpoint import check_run_dir, prepare_run_dir, save_checkpoint
from simclrv2.errors import SimCLRv2Error
from simclrv2.models.networks import Classifier, SimCLRModel
from simclrv2.models.spec import ModelSpec
from simclrv2.tf_import.architecture import recognise_encoder, recognise_head, tf_creation_order, torch_conv_shape
from simclrv2.tf_import.classes import class_names
from simclrv2.tf_import.names import Layout, sort_names
from simclrv2.tf_import.reader import TFCheckpoint, open_checkpoint

WHAT = ("pretrained", "classifier")
IMAGENET_SIZE = 224  # the released networks were trained and evaluated at 224 px (tf2/colabs, HEIGHT = 224)
CIFAR_SIZE = 32  # the authors' code takes the CIFAR stem for images of at most 32 px
# The authors' bucket folders (gs://simclr-checkpoints/simclrv2/FOLDER/r50_1x_sk0/): what each holds, and the
# projection-head layer its classifier sits on. The paper fine-tunes on 1 %/10 % of the labels from head layer 1
# and on 100 % from layer 0; the pretrained networks' linear-evaluation head and the supervised baselines read
# the encoder output. For the distilled students the authors do not say: None asks the user.
RELEASED_FOLDERS: dict[str, tuple[str, int | None]] = {
    "pretrained": ("pretrained", 0),
    "finetuned_1pct": ("classifier", 1),
    "finetuned_10pct": ("classifier", 1),
    "finetuned_100pct": ("classifier", 0),
    "supervised": ("classifier", 0),
    "distill_1pct": ("classifier", None),
    "distill_10pct": ("classifier", None),
}
_BN_PAIRS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


@dataclass
class ImportResult:
    """What was imported and where it went; ``skipped`` counts the variables each rule skipped."""

    run_dir: Path
    spec: ModelSpec
    kind: str  # "simclr" or "classifier"
    source: str
    format: str
    mapped: int
    skipped: dict[str, int] = field(default_factory=dict)
    head_layer: int | None = None
    classes: tuple[str, ...] = ()


def import_checkpoint(checkpoint: str | Path, output: str | Path, what: str | None = None,
                      head_layer: int | None = None, image_size: int | None = None,
                      overwrite: bool = False) -> ImportResult:
    """Reads ``checkpoint`` (TF1 checkpoint or TF2 SavedModel) and writes the run ``output``.

    ``what``: "pretrained" or "classifier" (default: from the authors' folder name, else "pretrained");
    ``head_layer``: the projection-head layer the classifier sits on (default: from the folder name, or the only
    layer whose width fits). Nothing is written unless every variable is mapped or skipped by a rule.
    """
    if what is not None and what not in WHAT:
        raise SimCLRv2Error(f"--what must be one of {', '.join(WHAT)}, got {what!r}")
    released_what, released_layer = RELEASED_FOLDERS.get(_released_folder(checkpoint) or "", (None, None))
    what = what or released_what or "pretrained"
    if what == "pretrained" and head_layer is not None:
        raise SimCLRv2Error("--head-layer says which head layer a classifier reads, and a pretraining run has no "
                            "classifier: add --what classifier, or drop --head-layer")
    check_run_dir(output, resume=False, overwrite=overwrite)
    tf_checkpoint = open_checkpoint(checkpoint)
    source = str(checkpoint)
    layout = sort_names(list(tf_checkpoint.shapes))
    _require_simclrv2(layout, tf_checkpoint, source)
    spec = _recognise(layout, tf_checkpoint, source)
    skipped = {rule: len(names) for rule, names in layout.skipped.items()}
    model = _simclr_model(tf_checkpoint, layout, spec)
    content: dict = {"kind": "simclr"}
    if what == "classifier":
        head_layer = _head_layer(layout, tf_checkpoint, model, head_layer, released_layer, source)
        network = _classifier(tf_checkpoint, layout, model, head_layer)
        above = [n for j in range(head_layer, spec.head_layers) for n in layout.head[j].values()]
        if above:  # our head layer j is their nl_{j-1}
            layers = ", ".join(f"nl_{j}" for j in range(head_layer, spec.head_layers))
            skipped[f"projection-head variables ({layers}) above layer {head_layer}, which the classifier reads: "
                    "they do not feed its logits"] = len(above)
        classes = class_names(network.num_classes)
        content = {"kind": "classifier", "head_layer": head_layer, "num_classes": network.num_classes,
                   "classes": list(classes)}
    else:
        network, classes, head_layer = model, (), None
        if layout.supervised:
            skipped["the classifier (head_supervised): a pretraining run holds none; --what classifier keeps it"
                    ] = len(layout.supervised)
    size = image_size or (CIFAR_SIZE if spec.cifar_stem else IMAGENET_SIZE)
    mapped = len(tf_checkpoint.shapes) - sum(skipped.values())
    provenance = {"checkpoint": tf_checkpoint.source, "format": tf_checkpoint.format,
                  "variables": len(tf_checkpoint.shapes), "mapped": mapped, "skipped": skipped}
    run_dir = prepare_run_dir(output, resume=False, overwrite=overwrite)
    save_checkpoint(run_dir / "checkpoints" / "final.pt", stage="import", architecture=spec.to_dict(),
                    image_size=size, model=network.state_dict(), imported_from=provenance, **content)
    return ImportResult(run_dir, spec, content["kind"], tf_checkpoint.source, tf_checkpoint.format, mapped,
                        skipped, head_layer, classes)


def _require_simclrv2(layout: Layout, checkpoint: TFCheckpoint, source: str) -> None:
    """One line for a checkpoint that is not SimCLRv2's, and a refusal naming every variable nothing maps."""
    if not layout.convs and not layout.norms:
        examples = ", ".join(layout.unmapped[:3]) or "only training state"
        raise SimCLRv2Error(
            f"{source} is a {checkpoint.format} but not a SimCLR one: none of its {len(checkpoint.shapes)} "
            f"variables is a layer of SimCLR's ResNet (…/conv2d_N/kernel, …/batch_normalization_N/gamma); it "
            f"holds {examples}"
        )
    if not layout.head:
        raise SimCLRv2Error(
            f"{source} holds a ResNet but no projection head (head_contrastive/nl_0…, projection_head/nl_0…): not a "
            "SimCLRv2 checkpoint (the SimCLRv1 checkpoints were released without theirs)"
        )
    if layout.unmapped:
        shown = ", ".join(layout.unmapped[:8]) + (f" and {len(layout.unmapped) - 8} more" if len(layout.unmapped) > 8
                                                  else "")
        raise SimCLRv2Error(
            f"{source}: {len(layout.unmapped)} variables belong to no part of a SimCLRv2 network and no rule skips "
            f"them: {shown}; nothing was written"
        )


def _recognise(layout: Layout, checkpoint: TFCheckpoint, source: str) -> ModelSpec:
    shapes = checkpoint.shapes
    norm_sizes = [shapes[next(iter(entry.values()))][0] for entry in layout.norms]
    encoder = recognise_encoder([torch_conv_shape(shapes[name]) for name in layout.convs], norm_sizes, source)
    missing = [j for j, entry in layout.head.items() if "kernel" not in entry]
    if missing:
        raise SimCLRv2Error(f"projection-head layer nl_{missing[0]} in {source} has no dense kernel")
    head_layers, proj_dim = recognise_head({j: shapes[e["kernel"]] for j, e in layout.head.items()},
                                           encoder.feature_dim, source)
    return ModelSpec(depth=encoder.depth, width_multiplier=encoder.width_multiplier, sk_ratio=encoder.sk_ratio,
                     cifar_stem=encoder.cifar_stem, in_channels=encoder.in_channels, head_layers=head_layers,
                     proj_dim=proj_dim, tf_pooling=True)


def _released_folder(checkpoint: str | Path) -> str | None:
    """The authors' bucket folder the checkpoint sits in (``…/finetuned_1pct/r50_1x_sk0/…``), if any."""
    parts = Path(checkpoint).expanduser().absolute().parts
    return next((part for part in reversed(parts) if part in RELEASED_FOLDERS), None)


def _simclr_model(checkpoint: TFCheckpoint, layout: Layout, spec: ModelSpec) -> SimCLRModel:
    """Encoder + projection head with the checkpoint's values (built on the meta device, then assigned)."""
    with torch.device("meta"):
        model = spec.build_simclr()
    state: dict[str, torch.Tensor] = {}
    convs, norms = tf_creation_order(model.encoder)
    for ours, theirs in zip(convs, layout.convs, strict=True):
        # TF kernels are (height, width, in, out); ours (out, in, height, width)
        state[f"encoder.{ours}.weight"] = _tensor(checkpoint.read(theirs).transpose(3, 2, 0, 1))
    for ours, theirs in zip(norms, layout.norms, strict=True):
        state.update(_batch_norm(f"encoder.{ours}", model.encoder.get_submodule(ours), theirs, checkpoint))
    for j, layer in enumerate(model.head.layers):
        entry = dict(layout.head[j])
        state[f"head.layers.{j}.0.weight"] = _tensor(checkpoint.read(entry.pop("kernel")).T)  # (in, out) -> (out, in)
        state.update(_batch_norm(f"head.layers.{j}.1", layer[1], entry, checkpoint))
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # cannot happen once the shapes were recognised; a message, not a traceback
        raise SimCLRv2Error(f"the checkpoint's values do not fit the recognised {spec.describe()}: "
                            f"{str(exc).splitlines()[0][:200]}") from exc
    return model


def _batch_norm(prefix: str, norm: nn.Module, entry: dict[str, str], checkpoint: TFCheckpoint
                ) -> dict[str, torch.Tensor]:
    """Our BN's weight, bias, running mean and variance from TF's gamma, beta, moving mean and variance."""
    wanted = {ours: theirs for ours, theirs in _BN_PAIRS.items() if getattr(norm, ours) is not None}
    extra = sorted(set(entry) - set(wanted.values()))
    if extra:  # e.g. a beta on the head's last BN, which SimCLRv2's has not
        raise SimCLRv2Error(f"{entry[extra[0]]} has no place in a SimCLRv2 network ({prefix} has no {extra[0]})")
    missing = [theirs for theirs in wanted.values() if theirs not in entry]
    if missing:
        raise SimCLRv2Error(f"the batch norm of {next(iter(entry.values()), prefix)} lacks its {missing[0]}")
    state = {f"{prefix}.{ours}": _tensor(checkpoint.read(entry[theirs])) for ours, theirs in wanted.items()}
    state[f"{prefix}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    return state


def _head_layer(layout: Layout, checkpoint: TFCheckpoint, model: SimCLRModel, chosen: int | None,
                released: int | None, source: str) -> int:
    """The projection-head layer the classifier reads: chosen, or the authors' for the folder, or the only one
    whose width fits. Layers 0 and 1 are equally wide in SimCLRv2, so the width alone rarely decides."""
    if set(layout.supervised) != {"kernel", "bias"}:
        raise SimCLRv2Error(f"{source} has no classifier (head_supervised/linear_layer/dense kernel and bias): "
                            "import it as a pretrained network (--what pretrained)")
    in_dim = checkpoint.shapes[layout.supervised["kernel"]][0]
    head = model.head
    fits = [j for j in range(head.num_layers + 1) if head.output_dim(j) == in_dim]
    layer = chosen if chosen is not None else released if released is not None else (
        fits[0] if len(fits) == 1 else None)
    if layer is None:
        raise SimCLRv2Error(
            f"cannot tell which projection-head layer the classifier of {source} reads: layers "
            f"{', '.join(str(j) for j in fits)} all give {in_dim} features and the checkpoint does not say; pass "
            "--head-layer (the paper fine-tunes on 1 %/10 % of the labels from layer 1, on 100 % from layer 0)"
        )
    if layer not in fits:
        raise SimCLRv2Error(f"the classifier of {source} reads {in_dim} features but head layer {layer} gives "
                            f"{head.output_dim(layer) if 0 <= layer <= head.num_layers else 'none'}; choose one of "
                            f"{', '.join(str(j) for j in fits)}")
    return layer


def _classifier(checkpoint: TFCheckpoint, layout: Layout, model: SimCLRModel, head_layer: int) -> Classifier:
    kernel = checkpoint.read(layout.supervised["kernel"])  # (in, classes)
    network = Classifier.from_simclr(model, head_layer, kernel.shape[1])
    with torch.no_grad():
        network.classifier.weight.copy_(_tensor(kernel.T))
        network.classifier.bias.copy_(_tensor(checkpoint.read(layout.supervised["bias"])))
    return network


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
