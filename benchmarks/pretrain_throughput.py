"""Pretraining throughput of simclrv2 on the peer protocol (../shared/bench: lightly 1.6.0 harness).

Protocol: Fashion-MNIST 28x28 one-channel images, CIFAR-stem ResNet-18 (width 0.25 and 1), batch 256 pairs,
NT-Xent tau = 0.5, random resized crop (0.08-1) + flip + colour jitter (strength 0.5, p 0.8), no blur, one
optimiser step per batch, torch's default threads. A pair is one image and its two views.

We time our own recipe: batched on-device augmentation, both views in one forward, our NT-Xent and LARS
(the peer uses SGD; the optimiser is a negligible share of a step). ``--head-layers 2`` matches the peer's
2-layer head; 3 is the SimCLRv2 default. Prints one JSON line per configuration.

Where the peer harness's virtual environment exists (``--peer-python``, made by ``setup_peers.sh`` in
``--peer-bench``), lightly runs right after ours at each width and the ratios are printed at the end (see
``peer_compare.py``); otherwise one line says how to set it up.

    python benchmarks/pretrain_throughput.py --width 0.25 1 --precision bf16 fp32
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from simclrv2.augment import AugmentConfig, simclr_views
from simclrv2.data import load_dataset
from simclrv2.losses import nt_xent_loss
from simclrv2.models import build_simclr_model, count_parameters
from simclrv2.optim import LARS, param_groups
from simclrv2.runtime import autocast, prepare_model, resolve_precision

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package
from peer_compare import DEFAULT_PEER_PYTHON, peer_ready, ratio_table, run_peer  # noqa: E402


def timed(fn, warmup: int, steps: int) -> float:
    """Mean seconds per call after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def measure(images: torch.Tensor, width: float, precision: str, head_layers: int, batch: int,
            steps: int, warmup: int, channels_last: bool, compile_model: bool = False) -> dict:
    device = torch.device("cpu")
    model = prepare_model(build_simclr_model(18, width_multiplier=width, cifar_stem=True, in_channels=1,
                                             head_layers=head_layers), device, channels_last)
    optimizer = LARS(param_groups(model, 1e-4), lr=0.1)
    forward = torch.compile(model) if compile_model else model
    augment = AugmentConfig(blur_prob=0.0, grayscale_prob=0.0)
    generator = torch.Generator().manual_seed(0)
    n = images.shape[0]
    x_fixed = torch.rand(2 * batch, 1, 28, 28, generator=generator)
    if channels_last:
        x_fixed = x_fixed.contiguous(memory_format=torch.channels_last)

    def views():
        idx = torch.randint(0, n, (batch,), generator=generator)
        return simclr_views(images[idx], augment, generator, channels_last=channels_last)

    def train_step(x: torch.Tensor) -> None:
        with autocast(device, precision):
            z1, z2 = forward(x).chunk(2)
        loss = nt_xent_loss(z1, z2, 0.5)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()

    def e2e() -> None:
        v1, v2 = views()
        train_step(torch.cat([v1, v2]))

    compile_start = time.perf_counter()
    if compile_model:  # the first calls compile the forward and backward graphs: not part of the timing
        train_step(x_fixed)
    compile_s = time.perf_counter() - compile_start
    data_s = timed(views, warmup, 30)
    model_s = timed(lambda: train_step(x_fixed), warmup, steps)
    e2e_s = timed(e2e, warmup, steps)
    return {
        "bench": "simclrv2_pretrain_throughput",
        "arch": f"resnet18w{width:g}",
        "width": width,
        "params": count_parameters(model),
        "head_layers": head_layers,
        "precision": resolve_precision(precision, device),
        "channels_last": channels_last,
        "compile": compile_model,
        "compile_s": round(compile_s, 1),
        "batch": batch,
        "e2e": {"pairs_per_s": round(batch / e2e_s, 1), "mean_s_per_step": round(e2e_s, 4)},
        "data_only": {"pairs_per_s": round(batch / data_s, 1)},
        "model_only": {"pairs_per_s": round(batch / model_s, 1), "mean_s_per_step": round(model_s, 4)},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, nargs="+", default=[0.25, 1.0])
    p.add_argument("--precision", nargs="+", default=["auto"], choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 where the CPU has native bf16 kernels (AVX-512 BF16/AMX), else fp32")
    p.add_argument("--head-layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=0, help="timed steps (0: 20 for width < 1, else 10)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (inductor; needs a C++ compiler)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: the usual search)")
    p.add_argument("--peer-bench", type=Path, default=None,
                   help="the shared peer harness folder (lightly 1.6.0); omit to measure only ours")
    p.add_argument("--peer-python", type=Path, default=DEFAULT_PEER_PYTHON,
                   help="python of the peer virtual environment (default: %(default)s)")
    args = p.parse_args()
    not_ready = peer_ready(args.peer_bench, args.peer_python) if args.peer_bench else "no --peer-bench given"
    images = load_dataset("fashion-mnist", "train", data_dir=args.data_dir).images
    ours, peers = [], []
    for width in args.width:
        for precision in args.precision:
            steps = args.steps or (20 if width < 1 else 10)
            result = measure(images, width, precision, args.head_layers, args.batch, steps, args.warmup,
                             not args.no_channels_last, args.compile)
            result.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                          python=platform.python_version())
            ours.append(result)
            print(json.dumps(result), flush=True)
        if not_ready is None:  # right after ours at the same width: the machine drifts between runs
            peers.append(run_peer(args.peer_bench, args.peer_python, width, args.data_dir))
            print(json.dumps(peers[-1]), flush=True)
    print(not_ready if not_ready else ratio_table(ours, peers), flush=True)


if __name__ == "__main__":
    main()
