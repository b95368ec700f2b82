"""Pretraining throughput of simclrv2 on the peer protocol (../shared/bench: lightly 1.6.0 harness).

Protocol: Fashion-MNIST 28x28 one-channel images, CIFAR-stem ResNet-18 (width 0.25 and 1), batch 256 pairs,
NT-Xent tau = 0.5, random resized crop (0.08-1) + flip + colour jitter (strength 0.5, p 0.8), no blur, one
optimiser step per batch, torch's default threads. A pair is one image and its two views.

We time ``simclrv2 pretrain`` itself: the stage runs on the first ``batch x (warmup + steps)`` training images
for one epoch, and the engine times each step (``on_step``, the measurement behind ``run.step_timing``): data
(the batch's indices and its batched on-device augmentation), model (both views in one forward, our NT-Xent,
backward and the recipe's LARS step; the peer uses SGD, a negligible share of a step) and the whole step (end
to end). The first ``--warmup`` steps are not counted. ``--head-layers 2`` matches the peer's 2-layer head; 3 is
the SimCLRv2 default. Prints one JSON line per configuration.

Where the peer harness's virtual environment exists (``--peer-python``, made by ``setup_peers.sh`` in
``--peer-bench``), lightly runs right after ours at each width and the ratios are printed at the end (see
``peer_compare.py``); otherwise one line says how to set it up.

    python benchmarks/pretrain_throughput.py --width 0.25 1 --precision bf16 fp32

``--rounds N`` measures everything N times (ours, then the peer, at each width, every round) and the table gives
each side's median with the range of the rounds' paired ratios: on machines whose speed moves from process to
process, one pair of runs can put the ratio a fifth off.

Beyond the peer protocol, ``--device cuda`` times the same stage on a GPU (no peer there), and ``--depth``,
``--sk-ratio`` and ``--image-size`` time the paper's bigger networks (Fashion-MNIST resized; an ImageNet stem above
32 px). On a GPU each line also gives the step's GFLOP per pair (forward and backward, counted once by
``torch.utils.flop_counter``) and the TFLOP/s that makes, beside the device's measured matmul peak in the step's
dtype (``--gemm-peak``):

    python benchmarks/pretrain_throughput.py --device cuda --depth 50 --width 1 2 --image-size 224 --batch 256
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from simclrv2.config import load_config
from simclrv2.models import conv_rules, count_parameters
from simclrv2.models.cpu_kernels import FLAGS_VARIABLE, build_kernels
from simclrv2.models.spec import ModelSpec
from simclrv2.provenance import cpu_kind, device_name
from simclrv2.runtime import resolve_precision
from simclrv2.stages.engine import StepTime
from simclrv2.stages.pretrain import pretrain

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package
from peer_compare import DEFAULT_PEER_PYTHON, peer_ready, ratio_table, run_peer  # noqa: E402

# A/B switches of --gemm-rules, each a value for every rule of simclrv2.models.conv_rules named in RULE_NAMES: the
# package's rules, none (oneDNN throughout but for the one-channel stem and the 16-channel direct kernel), the weight
# gradient on 4x4 maps alone, the rules without those added for the compiled re-layouts, the rules without
# Winograd's, and Winograd's F(2x2, 3x3) alone, as before F(4x4, 3x3) (from 32 channels; the 16-channel layer's
# forward and input gradient the direct kernel's)
RULE_NAMES = ("GEMM_RULES", "GEMM_RULES_WITH_COMPILED_LAYOUTS", "FP32_AVX2_GEMM_RULES", "FP32_AVX2_WINOGRAD_RULES",
              "FP32_AVX512_BF16_WINOGRAD_RULES", "AVX512_BF16_GEMM_RULES")
WEIGHT_GRAD_4PX = (("backward-weights", 16, 1),)
WINOGRAD_F2 = (("forward", 32, 256, 2), ("backward-data", 32, 256, 2), ("backward-weights", 32, 512, 2))
_DEFAULT = {name: getattr(conv_rules, name) for name in RULE_NAMES}
_NONE = dict.fromkeys(RULE_NAMES, ())
GEMM_RULE_SETS = {"default": _DEFAULT, "none": _NONE,
                  "weight-grad-4px": {**_NONE, "GEMM_RULES": WEIGHT_GRAD_4PX},
                  "no-compiled-layout-rules": {**_DEFAULT, "GEMM_RULES_WITH_COMPILED_LAYOUTS": ()},
                  "no-winograd": {**_DEFAULT, "FP32_AVX2_WINOGRAD_RULES": (), "FP32_AVX512_BF16_WINOGRAD_RULES": ()},
                  "winograd-f2": {**_DEFAULT, "FP32_AVX2_WINOGRAD_RULES": WINOGRAD_F2,
                                  "FP32_AVX512_BF16_WINOGRAD_RULES": WINOGRAD_F2}}


def use_gemm_rules(name: str) -> None:
    """Switch the package's convolution rules to the set ``name`` for this process (read by Conv2d at each call):
    an A/B switch of the benchmarks, not an option."""
    for rule, value in GEMM_RULE_SETS[name].items():
        setattr(conv_rules, rule, value)


def step_gflop_per_pair(model: torch.nn.Module, in_channels: int, image_size: int, device: torch.device,
                        channels_last: bool) -> float:
    """GFLOP of one pair's forward and backward through encoder and head (two views, fp32 on ``device``): what a
    step's TFLOP/s is counted from. The loss and optimiser add well under 1 %."""
    model = model.to(device)
    views = torch.rand(2, in_channels, image_size, image_size, device=device)
    if channels_last:
        model, views = model.to(memory_format=torch.channels_last), views.contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        model(views).sum().backward()
    return counter.get_total_flops() / 1e9


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, n: int = 8192, repeats: int = 10) -> float:
    """The best TFLOP/s of an n^3 matmul in ``dtype`` on a GPU (TF32 off: fp32 is fp32): the step's ceiling."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeats + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize(device)
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * n**3 / best / 1e12


def measure(data_dir: str | None, width: float, precision: str, head_layers: int, batch: int, steps: int,
            warmup: int, channels_last: bool, compile_model: bool = False, keep_freed_memory: bool = True,
            fused_kernels: bool = True, device: str = "cpu", depth: int = 18, sk_ratio: float = 0.0,
            image_size: int = 28, cudnn_benchmark: bool = True) -> dict:
    """One configuration: ``simclrv2 pretrain`` for ``warmup + steps`` steps, its steps timed by the engine."""
    config = load_config(None, {
        "data.dataset": "fashion-mnist", "data.data_dir": data_dir or "", "data.val_size": "0",
        "data.train_limit": str(batch * (warmup + steps)), "data.image_size": str(image_size),
        "model.depth": str(depth), "model.width_multiplier": str(width), "model.sk_ratio": str(sk_ratio),
        "model.stem": "cifar" if image_size <= 32 else "imagenet", "model.head_layers": str(head_layers),
        "augment.blur_prob": "0", "augment.grayscale_prob": "0", "pretrain.epochs": "1",
        "pretrain.batch_size": str(batch), "pretrain.temperature": "0.5", "run.device": device,
        "run.precision": precision, "run.channels_last": str(channels_last).lower(),
        "run.compile": str(compile_model).lower(), "run.keep_freed_memory": str(keep_freed_memory).lower(),
        "run.fused_kernels": str(fused_kernels).lower(), "run.cudnn_benchmark": str(cudnn_benchmark).lower(),
        "run.progress": "false", "run.tensorboard": "false", "run.knn_every": "0", "run.log_every": "1000000"})
    times: list[StepTime] = []
    with tempfile.TemporaryDirectory() as run_dir:
        pretrain(config, Path(run_dir) / "run", on_step=times.append)
    timed = times[warmup:]
    e2e_s, data_s, model_s = (sum(getattr(t, key) for t in timed) / len(timed)
                              for key in ("step_s", "data_s", "model_s"))
    spec = ModelSpec.from_config(config.model, image_size, 1)
    model = spec.build_simclr()  # built once: the paper's largest network takes seconds to build
    params = count_parameters(model)
    on = torch.device(device)
    resolved = resolve_precision(precision, on)
    if on.type == "cuda":
        gflop = step_gflop_per_pair(model, spec.in_channels, image_size, on, channels_last)
        gpu = {"device": device_name(on), "cudnn_benchmark": cudnn_benchmark, "gflop_per_pair": round(gflop, 2),
               "model_tflops": round(gflop * batch / model_s / 1e3, 1),
               "peak_memory_gib": round(torch.cuda.max_memory_allocated(on) / 2**30, 2)}
        torch.cuda.reset_peak_memory_stats(on)
    else:
        gpu = {}
    return {
        "bench": "simclrv2_pretrain_throughput",
        "arch": f"resnet{depth}w{width:g}" + ("sk" if sk_ratio else ""),
        "width": width,
        "image_size": image_size,
        "params": params,
        "head_layers": head_layers,
        "precision": resolved,
        **gpu,
        "channels_last": channels_last,
        "compile": compile_model,
        "keep_freed_memory": keep_freed_memory,
        # whether they ran: asked for, on the CPU, and built and usable here (not set aside: cpu_kernels)
        "fused_kernels": fused_kernels and on.type == "cpu" and build_kernels() is not None,
        "compile_s": round(times[0].step_s, 1) if compile_model else 0.0,  # the first step compiles
        "batch": batch,
        "steps": len(timed),
        "e2e": {"pairs_per_s": round(batch / e2e_s, 1), "mean_s_per_step": round(e2e_s, 4)},
        "data_only": {"pairs_per_s": round(batch / data_s, 1)},
        "model_only": {"pairs_per_s": round(batch / model_s, 1), "mean_s_per_step": round(model_s, 4)},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, nargs="+", default=[0.25, 1.0])
    p.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N (no peer runs there)")
    p.add_argument("--depth", type=int, default=18, help="ResNet depth (the peer protocol's is 18)")
    p.add_argument("--sk-ratio", type=float, default=0.0, help="Selective Kernels (0.0625 in the paper; 0: off)")
    p.add_argument("--image-size", type=int, default=28,
                   help="Fashion-MNIST resized to this side (the peer protocol's is 28; an ImageNet stem above 32)")
    p.add_argument("--no-cudnn-benchmark", action="store_true",
                   help="run.cudnn_benchmark = false: cuDNN's heuristic algorithms instead of timed ones")
    p.add_argument("--gemm-peak", action="store_true",
                   help="on a GPU, also time an 8192^3 matmul in bf16 and fp32 (TF32 off): the step's ceiling")
    p.add_argument("--precision", nargs="+", default=["auto"], choices=["auto", "bf16", "fp32", "bf16-math", "tf32"],
                   help="auto: bf16 where the CPU has native bf16 kernels (AVX-512 BF16/AMX), else fp32")
    p.add_argument("--head-layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=0, help="timed steps (0: 20 for width < 1, else 10)")
    p.add_argument("--warmup", type=int, default=2, help="first steps not counted (at least 1 with --compile)")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (inductor; needs a C++ compiler)")
    p.add_argument("--gemm-rules", choices=tuple(GEMM_RULE_SETS), default="default",
                   help="which convolution passes run as GEMMs over patches (simclrv2.models.conv_rules.GEMM_RULES, "
                        "FP32_AVX2_GEMM_RULES in fp32 where oneDNN runs AVX2, AVX512_BF16_GEMM_RULES in bf16 on "
                        "AVX-512-BF16 without AMX) and which run Winograd's (FP32_AVX2_WINOGRAD_RULES, "
                        "FP32_AVX512_BF16_WINOGRAD_RULES): none leaves every rule out (oneDNN throughout but for a "
                        "one-channel stem and the 16-channel direct kernel), weight-grad-4px the weight gradient on "
                        "4x4 maps only (the rule before the others were measured), no-compiled-layout-rules leaves "
                        "out the rules added where the compiled re-layouts run, no-winograd Winograd's, winograd-f2 "
                        "keeps only F(2x2, 3x3) from 32 channels (the rules before F(4x4, 3x3)), to measure what "
                        "they give")
    p.add_argument("--no-direct-kernels", action="store_true",
                   help="oneDNN's passes where our convolution kernels would run (simclrv2.models."
                        "conv_rules.direct_passes: a small one-channel stem, fp32 16-channel 3x3 layers, Winograd's "
                        "fp32 3x3 layers where oneDNN runs AVX2), to measure them")
    p.add_argument("--no-keep-freed-memory", action="store_true",
                   help="run.keep_freed_memory = false: glibc's default allocation, to measure what it gives (it "
                        "lasts for the process, so compare separate invocations)")
    p.add_argument("--no-fused-kernels", action="store_true",
                   help="run.fused_kernels = false: PyTorch's separate BatchNorm, add and ReLU ops, to measure what "
                        "the fused kernels (simclrv2.models.bn_relu) give")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: the usual search)")
    p.add_argument("--peer-bench", type=Path, default=None,
                   help="the shared peer harness folder (lightly 1.6.0); omit to measure only ours")
    p.add_argument("--peer-python", type=Path, default=DEFAULT_PEER_PYTHON,
                   help="python of the peer virtual environment (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure everything this many times, ours then the peer at each width every round; the "
                        "table gives medians and the range of the rounds' paired ratios (for machines whose speed "
                        "moves between runs)")
    args = p.parse_args()
    # a run of a few steps would warn that it cannot train; the stage's other messages are not for a benchmark
    logging.getLogger("simclrv2").setLevel(logging.ERROR)
    use_gemm_rules(args.gemm_rules)
    conv_rules.DIRECT_KERNELS = not args.no_direct_kernels
    not_ready = peer_ready(args.peer_bench, args.peer_python) if args.peer_bench else "no --peer-bench given"
    on_gpu = torch.device(args.device).type == "cuda"
    if on_gpu:
        not_ready = "the peer runs on the CPU only: no ratios on a GPU"
        if args.gemm_peak:
            peaks = {name: round(matmul_peak_tflops(torch.device(args.device), dtype), 1)
                     for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))}
            print(json.dumps({"bench": "gpu_matmul_peak", "device": device_name(torch.device(args.device)),
                              "n": 8192, "tflops": peaks}), flush=True)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    ours, peers = [], []
    for round_index in range(args.rounds):
        for width in args.width:
            for precision in args.precision:
                steps = args.steps or (20 if width < 1 else 10)
                result = measure(args.data_dir, width, precision, args.head_layers, args.batch, steps, args.warmup,
                                 not args.no_channels_last, args.compile, not args.no_keep_freed_memory,
                                 not args.no_fused_kernels, args.device, args.depth, args.sk_ratio,
                                 args.image_size, not args.no_cudnn_benchmark)
                result.update(round=round_index, gemm_rules=args.gemm_rules, direct_kernels=conv_rules.DIRECT_KERNELS,
                              kernel_flags=os.environ.get(FLAGS_VARIABLE, ""), **cpu_kind(),
                              torch=torch.__version__, torch_threads=torch.get_num_threads(),
                              python=platform.python_version())
                ours.append(result)
                print(json.dumps(result), flush=True)
            if not_ready is None:  # right after ours at the same width: the machine drifts between runs
                peers.append({**run_peer(args.peer_bench, args.peer_python, width, args.data_dir),
                              "round": round_index})
                print(json.dumps(peers[-1]), flush=True)
    print(not_ready if not_ready else ratio_table(ours, peers), flush=True)


if __name__ == "__main__":
    main()
