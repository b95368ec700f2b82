"""What a run of a config would do on this machine, before it runs (``simclrv2 info``).

The speed of a step depends on the machine more than on any option: whether the CPU computes in bf16, whether the
compiled kernels build, and which engine runs each convolution pass (oneDNN, a GEMM, Winograd, a direct kernel of
ours) follow from the CPU's features, decided per machine. This module asks the same functions a training session
asks, on the config's own network, so what it prints is what a run would do; it is also the environment block to
paste into a bug report (``--json``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from simclrv2.data import DATASETS
from simclrv2.data.streaming.select import STREAMED
from simclrv2.errors import SimCLRv2Error
from simclrv2.models.conv import Conv2d
from simclrv2.models.cpu_kernels import fused_kernels
from simclrv2.models.spec import ModelSpec
from simclrv2.provenance import cpu_kind, provenance
from simclrv2.runtime import autocast, onednn_fp32_math, prepare_model, resolve_device, resolve_precision

# The image size and channels of the built-in datasets, for a config that keeps their own (data.image_size = 0).
DATASET_GEOMETRY: dict[str, tuple[int, int]] = {
    "fashion-mnist": (28, 1), "mnist": (28, 1), "cifar10": (32, 3), "cifar100": (32, 3), "stl10": (96, 3),
}
# Image folders and shards choose their size from their images when a run reads them; the plan assumes this one.
FOLDER_GEOMETRY = (96, 3)
PASSES = {"forward": "forward", "backward-data": "input_gradient", "backward-weights": "weight_gradient"}


def network_geometry(data: Any) -> tuple[int, int, str]:
    """The image size and channels the config's network would see, and where they come from."""
    known = (*DATASETS, *STREAMED)
    if data.dataset not in known:
        raise SimCLRv2Error(f"unknown dataset {data.dataset!r}; choose one of: {', '.join(dict.fromkeys(known))}")
    size, channels = DATASET_GEOMETRY.get(data.dataset, (0, 0))
    source = f"{data.dataset}'s own"
    if not size:
        size, channels = FOLDER_GEOMETRY
        source = ("assumed: a run reads a folder's size from its images; set data.image_size and data.channels to "
                  "plan for another")
    if data.image_size or data.channels:
        source = "the config's"
    return data.image_size or size, data.channels or channels, source


@contextmanager
def _calls(model: nn.Module) -> Iterator[list[tuple[Conv2d, torch.Tensor]]]:
    """Every convolution call of a forward pass inside the block, with its input."""
    seen: list[tuple[Conv2d, torch.Tensor]] = []
    hooks = [module.register_forward_pre_hook(lambda conv, inputs: seen.append((conv, inputs[0])))
             for module in model.modules() if isinstance(module, Conv2d)]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def convolution_plan(spec: ModelSpec, image_size: int, device: torch.device, precision: str,
                     channels_last: bool) -> list[dict[str, Any]]:
    """Where each pass of the encoder's convolutions runs in a training step: one row per shape and plan, with how
    many layers share it, in the order the forward pass meets them."""
    encoder = prepare_model(spec.build_simclr(seed=0).encoder, device, channels_last)
    images = torch.zeros(2, spec.in_channels, image_size, image_size, device=device)  # values do not matter
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    rows: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]] = {}
    with torch.enable_grad(), autocast(device, precision), _calls(encoder) as calls:
        encoder.forward_features(images)  # as in training: the parameters ask for gradients, the images do not
        planned = [(conv, x, conv.engines(x)) for conv, x in calls]
    for conv, x, engines in planned:
        out = (x.shape[-1] + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        shape = (f"{conv.in_channels}->{conv.out_channels} {conv.kernel_size[0]}x{conv.kernel_size[1]}"
                 f"/{conv.stride[0]} @{out}px")
        key = (shape, tuple(engines.items()))
        row = rows.setdefault(key, {"shape": shape, "layers": 0,
                                    **{PASSES[name]: "-" for name in PASSES}})
        row["layers"] += 1
        row.update({PASSES[name]: engine for name, engine in engines.items()})
    return list(rows.values())


def machine_info(config: Any) -> dict[str, Any]:
    """The code, the machine, and what a run of ``config`` would choose on it: precision, compiled kernels and
    each convolution pass's engine. Builds the compiled kernels where a run would (once per machine), and leaves
    the process's kernel switch as it was."""
    run = config.run
    device = resolve_device(run.device)
    precision = resolve_precision(run.precision, device)
    image_size, channels, geometry = network_geometry(config.data)
    spec = ModelSpec.from_config(config.model, image_size, channels)
    on_cpu = device.type == "cpu"
    with fused_kernels(on_cpu and run.fused_kernels) as kernels_on, onednn_fp32_math(precision):
        plan = convolution_plan(spec, image_size, device, run.precision, run.channels_last)
    if not on_cpu:
        kernels = f"not used on {device.type}"
    elif not run.fused_kernels:
        kernels = "off (run.fused_kernels = false): PyTorch's ops"
    else:
        kernels = "on" if kernels_on else "unavailable (the warning above says why): PyTorch's ops"
    return {
        **provenance(device, run.precision),
        **(cpu_kind() if on_cpu else {}),
        "torch_threads": run.threads if run.threads > 0 else torch.get_num_threads(),
        "precision_config": run.precision,
        "precision": precision,
        "compiled_kernels": kernels,
        "network": f"{spec.describe()} at {image_size} px, {channels} channel{'s' if channels > 1 else ''}",
        "network_geometry": geometry,
        "convolutions": plan,
    }


def _bf16_note(info: dict[str, Any]) -> str:
    if info["precision_config"] != "auto":
        return "as the config sets it"
    if info["bf16_fast"]:
        return "this machine has native bf16 kernels"
    return "no native bf16 kernels here: bf16 would fall back to a slow reference path"


def format_info(info: dict[str, Any]) -> str:
    """The human-readable form: a few lines of set-up, then the convolution plan as a table."""
    device = torch.device(info["device"])
    commit = f", git {info['git_commit'][:7]}{' (modified)' if info['git_dirty'] else ''}" if info["git_commit"] else ""
    lines = [f"simclrv2 {info['version'] or '(not installed)'}{commit}; torch {info['torch']}, Python {info['python']}",
             f"device:       {info['device']} ({info['device_name']}), {info['cpu_count']} cores, "
             f"{info['torch_threads']} torch threads"]
    if device.type == "cpu":
        flags = " ".join(info["cpu_flags"]) or "none of amx_bf16, avx512_bf16, avx512f, avx2"
        caps = [f"{name}={info[key]}" for name, key in (("ONEDNN_MAX_CPU_ISA", "onednn_max_cpu_isa"),
                                                        ("MKL_ENABLE_INSTRUCTIONS", "mkl_enable_instructions"))
                if info[key]]
        lines.append(f"CPU features: {flags}" + (f"; held by {', '.join(caps)}" if caps else ""))
    lines += [f"precision:    {info['precision_config']} -> {info['precision']} ({_bf16_note(info)})",
              f"kernels:      {info['compiled_kernels']}",
              f"network:      {info['network']} ({info['network_geometry']})",
              "convolutions: where each pass of a training step runs",
              ""]
    header = ["layers", "shape", *(name.replace("_", " ") for name in PASSES.values())]
    table = [[str(row["layers"]), row["shape"], *(row[name] for name in PASSES.values())]
             for row in info["convolutions"]]
    widths = [max(len(cells[i]) for cells in [header, *table]) for i in range(len(header))]
    for cells in [header, *table]:
        lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip())
    return "\n".join(lines)
