"""The CUDA path: each building block gives the CPU's numbers on a GPU, and every stage trains there.

Skipped without a CUDA device (CI has none). On a GPU machine: ``python -m pytest tests/test_cuda.py``; the
benchmark script ``benchmarks/gpu_check.sh`` runs it first.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import streaming_helpers as helpers
from conftest import QUICK, free_port, quick_config_values
from simclrv2 import LARS, load, nt_xent_loss, param_groups
from simclrv2.augment import AugmentConfig, simclr_views
from simclrv2.augment.color import apply_jitter_, sample_jitter
from simclrv2.augment.geometry import resized_crop, sample_crop_boxes
from simclrv2.checkpoint import load_checkpoint, read_metrics
from simclrv2.cli import main
from simclrv2.config import load_config
from simclrv2.models.spec import ModelSpec
from simclrv2.runtime import set_fp32_math
from simclrv2.stages.finetune import finetune
from simclrv2.stages.pipeline import pipeline
from simclrv2.stages.pretrain import pretrain

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_cuda_math():
    """Exact fp32 (no TF32) and cuDNN's deterministic algorithms while a test compares with the CPU. The stages set
    ``cudnn.benchmark`` (``run.cudnn_benchmark``) and the fp32 mode themselves, so both are put back after each test;
    TF32 through the package's own switch, since torch refuses to mix its two ways of setting it."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    set_fp32_math("fp32")
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    yield
    set_fp32_math("fp32")
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


def test_nt_xent_and_its_gradients_match_the_cpu():
    torch.manual_seed(0)
    z1, z2, queue = torch.randn(48, 32), torch.randn(48, 32), nn.functional.normalize(torch.randn(100, 32), dim=1)
    results = {}
    for device in ("cpu", CUDA):
        a, b = (z.to(device, copy=True).requires_grad_() for z in (z1, z2))  # a fresh leaf on each device
        loss = nt_xent_loss(a, b, temperature=0.2, extra_negatives=queue.to(device))
        loss.backward()
        results[str(device)] = (loss.detach().cpu(), a.grad.cpu(), b.grad.cpu())
    for cpu, gpu in zip(results["cpu"], results["cuda"], strict=True):
        torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-6)


def test_two_lars_steps_match_the_cpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(64, 16)
    states = {}
    for device in ("cpu", CUDA):
        on_device = copy.deepcopy(model).to(device)
        optimizer = LARS(param_groups(on_device, 1e-4), lr=0.5, momentum=0.9, weight_decay=1e-4)
        for _ in range(2):
            optimizer.zero_grad()
            on_device(x.to(device)).square().mean().backward()
            optimizer.step()
        states[str(device)] = {k: v.cpu() for k, v in on_device.state_dict().items()}
    for name, value in states["cpu"].items():
        torch.testing.assert_close(states["cuda"][name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(("depth", "width", "sk_ratio", "stem", "size"),
                         [(18, 0.25, 0.0, "cifar", 28), (50, 0.125, 0.0625, "imagenet", 64)])
def test_encoder_and_head_forward_and_backward_match_the_cpu(depth, width, sk_ratio, stem, size):
    """In float64 (training mode: BatchNorm on batch statistics), so any difference is the code path, not rounding;
    then bf16 autocast on the GPU stays close to the exact projections."""
    config = load_config(None, {"model.depth": str(depth), "model.width_multiplier": str(width),
                                "model.sk_ratio": str(sk_ratio), "model.stem": stem})
    torch.manual_seed(0)
    model = ModelSpec.from_config(config.model, size, 3).build_simclr().double()
    gpu_model = copy.deepcopy(model).to(CUDA).to(memory_format=torch.channels_last)
    x = torch.rand(6, 3, size, size, dtype=torch.float64)
    out = model(x)
    out.square().sum().backward()
    gpu_out = gpu_model(x.to(CUDA).contiguous(memory_format=torch.channels_last))
    gpu_out.square().sum().backward()
    torch.testing.assert_close(gpu_out.cpu(), out.detach(), rtol=1e-9, atol=1e-10)
    for (name, p), gpu_p in zip(model.named_parameters(), gpu_model.parameters(), strict=True):
        torch.testing.assert_close(gpu_p.grad.cpu(), p.grad, rtol=1e-7, atol=1e-9, msg=name)

    gpu_model = gpu_model.float()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        low = gpu_model(x.float().to(CUDA).contiguous(memory_format=torch.channels_last)).float().cpu()
    cosine = nn.functional.cosine_similarity(low.double(), out.detach(), dim=1)
    assert cosine.min() > 0.99, cosine


def test_augmentation_geometry_and_colour_match_the_cpu_given_the_same_draws():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8).float() / 255
    boxes = sample_crop_boxes(16, 40, 40, (0.08, 1.0), (3 / 4, 4 / 3), generator)
    crops = resized_crop(images, boxes, 32)
    # bilinear sampling rounds differently on the GPU (5e-6 seen); a misplaced sample point is ~1e-2 off
    torch.testing.assert_close(resized_crop(images.to(CUDA), boxes.to(CUDA), 32).cpu(), crops, rtol=0, atol=2e-5)
    order, params = sample_jitter(16, 0.5, 1.0, generator)
    jittered = apply_jitter_(crops.clone(), order, params)
    gpu = apply_jitter_(crops.to(CUDA), order.to(CUDA), params.to(CUDA)).cpu()
    torch.testing.assert_close(gpu, jittered, rtol=0, atol=1e-5)


def test_views_on_the_gpu_follow_the_seed_and_stay_in_range():
    images = torch.randint(0, 256, (32, 3, 48, 48), dtype=torch.uint8, device=CUDA)
    config = AugmentConfig(jitter_strength=1.0)

    def views(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return simclr_views(images, config, torch.Generator(device=CUDA).manual_seed(seed), channels_last=True,
                            out_size=40)

    (a1, a2), (b1, b2), (c1, _) = views(1), views(1), views(2)
    assert a1.device.type == "cuda" and a1.shape == (32, 3, 40, 40) and a1.is_contiguous(
        memory_format=torch.channels_last)
    assert torch.equal(a1, b1) and torch.equal(a2, b2) and not torch.equal(a1, c1) and not torch.equal(a1, a2)
    assert 0 <= float(torch.cat([a1, a2]).min()) and float(torch.cat([a1, a2]).max()) <= 1


def test_every_stage_trains_on_the_gpu_and_its_networks_load_on_the_cpu(tmp_path, tiny_fashion):
    """The whole pipeline at the quick settings with ``run.device = cuda`` and bf16 (``auto`` on a GPU): the
    pretrained encoder's kNN accuracy beats its random start, fine-tuning beats chance well, and a fine-tuned
    network trained on the GPU predicts on the CPU what it predicts on the GPU."""
    config = quick_config_values(tiny_fashion, **{"run.device": "cuda", "run.precision": "auto",
                                                  "pipeline.label_fractions": "10%", "pipeline.head_layers": "1",
                                                  "run.knn_every": 0, "finetune.epochs": 3, "finetune.min_steps": 80,
                                                  "finetune.optimizer.name": "adamw",
                                                  "finetune.optimizer.base_lr": 3e-3})
    summary = pipeline(config, tmp_path / "run")
    pretrained = json.loads((tmp_path / "run" / "pretrain" / "result.json").read_text())["details"]
    assert pretrained["knn_top1"] > pretrained["knn_top1_at_init"] + 0.05
    by_method = {r.method: r for r in summary.rows}
    assert by_method["fine-tuned (head layer 1)"].val_top1 >= 0.5
    assert all(r.val_top1 is not None and r.test_top1 is not None for r in summary.rows)

    finetuned = load(tmp_path / "run" / "finetune-10pct-layer1")
    images = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    on_cpu = finetuned.predict(images)
    on_gpu = finetuned.to(CUDA).predict(images)
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-5)


def test_torchrun_on_one_gpu_runs_nccl_with_global_batchnorm(tmp_path, tiny_fashion):
    """The multi-GPU path on the one GPU there is: NCCL, SyncBatchNorm and the gathered negatives."""
    overrides = {**QUICK, "data.data_dir": str(tiny_fashion), "run.device": "cuda", "run.precision": "auto",
                 "pretrain.global_bn": "true", "pretrain.epochs": "1"}
    args = [a for key, value in overrides.items() for a in (f"--{key}", value)]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port",
                           str(free_port()), "-m", "simclrv2.cli", "pretrain", "--run-dir", str(tmp_path / "run"),
                           *args], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "4"},
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    final = load_checkpoint(tmp_path / "run")
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["event"] == "train"]
    assert final["step"] > 0 and losses and all(loss == loss and loss > 0 for loss in losses)
    record = json.loads((tmp_path / "run" / "result.json").read_text())["details"]["provenance"]
    assert record["device"].startswith("cuda") and record["precision"] == "bf16"


def test_streamed_pretraining_on_the_gpu_then_predict_and_embed_there_from_the_command_line(tmp_path, capsys):
    """Image folders streamed by DataLoader workers into pinned memory and on to the GPU; then the command-line
    ``predict`` and ``embed`` with ``--device cuda`` give what the CPU gives."""
    data = helpers.write_splits(tmp_path / "data", helpers.smooth_images(48, 32), helpers.smooth_images(16, 32, 1))
    device = {"run.device": "cuda", "run.precision": "auto", "data.stream": "stream", "data.workers": 2}
    pretrain(helpers.tiny_config(data, 32, {**device, "pretrain.epochs": 2, "pretrain.batch_size": 16}),
             tmp_path / "pretrain")
    assert all(math.isfinite(loss) for loss in helpers.losses(tmp_path / "pretrain"))
    run = tmp_path / "finetune"
    finetune(helpers.tiny_config(data, 32, {**device, "finetune.pretrained": tmp_path / "pretrain",
                                            "finetune.labels": "100%", "finetune.epochs": 2,
                                            "finetune.min_steps": 0, "finetune.batch_size": 8}), run)
    for where in ("cpu", "cuda"):
        assert main(["predict", "--checkpoint", str(run), str(data / "test"), "--output",
                     str(tmp_path / f"predict-{where}.csv"), "--device", where]) == 0, capsys.readouterr().err
        assert main(["embed", "--checkpoint", str(run), str(data / "test"), "--output",
                     str(tmp_path / f"embed-{where}"), "--device", where]) == 0, capsys.readouterr().err
    rows = {where: list(csv.DictReader((tmp_path / f"predict-{where}.csv").open())) for where in ("cpu", "cuda")}
    assert [r["image"] for r in rows["cuda"]] == [r["image"] for r in rows["cpu"]] and len(rows["cpu"]) == 16
    for on_gpu, on_cpu in zip(rows["cuda"], rows["cpu"], strict=True):
        probabilities = [(float(on_gpu[k]), float(on_cpu[k])) for k in on_cpu if k.startswith("p_")]
        assert all(abs(a - b) < 1e-4 for a, b in probabilities), (on_gpu, on_cpu)
    np.testing.assert_allclose(np.load(tmp_path / "embed-cuda" / "features.npy"),
                               np.load(tmp_path / "embed-cpu" / "features.npy"), rtol=1e-3, atol=1e-4)


def test_info_on_the_gpu_names_cudnn_for_every_convolution_pass(capsys):
    assert main(["info", "--model.width_multiplier", "0.25", "--run.device", "cuda", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    engines = {row[name] for row in info["convolutions"] for name in ("forward", "input_gradient", "weight_gradient")}
    assert engines == {"cuDNN", "-"}  # "-": the images ask for no input gradient of the stem
