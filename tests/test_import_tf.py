"""simclrv2 import: the authors' TensorFlow checkpoints become runs of ours that compute what theirs compute.

The checkpoints are written here with TensorFlow in the authors' layout (their variable names, shapes and
creation order, random values) by a reference network written with ``tf.nn`` ops from their code
(google-research/simclr ``resnet.py``, ``model_util.py``): fixed padding on strided convs, "SAME" max-pool,
the ResNet-D shortcut with its stride-1 pool, the SK split, BN eps 1e-5. Its outputs are what ours must give.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import simclrv2
from simclrv2.checkpoint import load_checkpoint, read_classifier, read_pretrained
from simclrv2.cli import main
from simclrv2.errors import SimCLRv2Error

BN_EPSILON = 1e-5  # the authors' BATCH_NORM_EPSILON
TOLERANCE = 1e-4  # fp32, every head layer and the logits


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip("tensorflow", reason="the import tests need TensorFlow: pip install 'simclrv2[tf]'")
    tf.config.threading.set_intra_op_parallelism_threads(1)  # as below; only this file uses TensorFlow
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The networks here are small: one thread is as fast, and threads spinning on a busy machine are not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Reference:
    """The authors' network run eagerly with tf.nn ops; each layer creates its variables as it first runs, in
    their order and with their layer names (conv2d_N, batch_normalization_N, dense), so the variables and the
    outputs come out of one pass. BN moving statistics are set near the batch's own, as training leaves them."""

    def __init__(self, tf, seed: int, width: float, sk_ratio: float = 0.0) -> None:
        self.tf, self.rng, self.width, self.sk_ratio = tf, np.random.default_rng(seed), width, sk_ratio
        self.entries: list[tuple] = []  # (part, scope, kind, number, variable, value) in creation order
        self.counts: Counter = Counter()
        self.part, self.scope = "encoder", "resnet"

    def run(self, images: np.ndarray, depth: int, head_layers: int, proj_dim: int, num_classes: int,
            head_layer: int) -> tuple[list[np.ndarray], np.ndarray]:
        """(outputs of head layers 0…k, logits of the classifier on layer ``head_layer``) for NHWC images."""
        hidden = self._encoder(self.tf.constant(images), depth)
        outputs = [hidden]
        for j in range(head_layers):
            self.part, last = ("head", j), j == head_layers - 1
            h = self._dense(outputs[-1], proj_dim if last else int(outputs[-1].shape[-1]), bias=False)
            h = self._bn(h, relu=not last, center=not last)
            outputs.append(h)
        self.part = "supervised"
        logits = self._dense(outputs[head_layer], num_classes, bias=True)
        return [o.numpy() for o in outputs], logits.numpy()

    def _number(self, kind: str) -> int:
        self.counts[kind] += 1
        return self.counts[kind] - 1

    def _add(self, kind: str, number: int, variable: str, value) -> np.ndarray:
        value = np.asarray(value, dtype=np.float32)
        self.entries.append((self.part, self.scope, kind, number, variable, value))
        return value

    def _conv(self, x, filters: int, kernel: int, stride: int):
        tf, cin = self.tf, int(x.shape[-1])
        number = self._number("conv2d")
        w = self._add("conv2d", number, "kernel",
                      self.rng.normal(0, math.sqrt(2 / (kernel * kernel * cin)), (kernel, kernel, cin, filters)))
        if stride > 1:  # fixed padding: independent of the input size
            begin = (kernel - 1) // 2
            x = tf.pad(x, [[0, 0], [begin, kernel - 1 - begin], [begin, kernel - 1 - begin], [0, 0]])
        return tf.nn.conv2d(x, w, stride, "VALID" if stride > 1 else "SAME")

    def _bn(self, x, relu: bool = True, center: bool = True, gamma: tuple[float, float] = (0.5, 1.5)):
        tf, channels = self.tf, int(x.shape[-1])
        number = self._number("batch_normalization")
        mean, var = (t.numpy() for t in tf.nn.moments(x, axes=list(range(len(x.shape) - 1))))
        gamma = self._add("batch_normalization", number, "gamma", self.rng.uniform(*gamma, channels))
        beta = self._add("batch_normalization", number, "beta", self.rng.normal(0, 0.2, channels)) if center else None
        mean = self._add("batch_normalization", number, "moving_mean", mean + self.rng.normal(0, 0.05, channels))
        # a floor at half the layer's mean square: a channel that barely varies over these few images would
        # otherwise be scaled up many times, and fp32 round-off with it (over a whole data set it varies more)
        var = self._add("batch_normalization", number, "moving_variance",
                        var * self.rng.uniform(0.8, 1.2, channels) + 0.5 * float(np.mean(np.square(x))) + 1e-3)
        y = tf.nn.batch_normalization(x, mean, var, beta, gamma, BN_EPSILON)
        return tf.nn.relu(y) if relu else y

    def _dense(self, x, units: int, bias: bool):
        number = self._number("dense")
        w = self._add("dense", number, "kernel", self.rng.normal(0, 1 / math.sqrt(int(x.shape[-1])),
                                                                   (int(x.shape[-1]), units)))
        y = self.tf.matmul(x, w)
        return y + self._add("dense", number, "bias", self.rng.normal(0, 0.1, units)) if bias else y

    def _sk_conv(self, x, filters: int, stride: int):
        tf = self.tf
        x = self._bn(self._conv(x, 2 * filters, 3, stride))
        a, b = tf.split(x, 2, axis=-1)
        context = tf.reduce_mean(a + b, [1, 2], keepdims=True)
        gate = self._bn(self._conv(context, max(int(filters * self.sk_ratio), 32), 1, 1))
        mix = tf.nn.softmax(tf.stack(tf.split(self._conv(gate, 2 * filters, 1, 1), 2, axis=-1)), axis=0)
        return a * mix[0] + b * mix[1]

    def _bottleneck(self, x, filters: int, stride: int, projection: bool):
        tf, shortcut = self.tf, x
        if projection:
            if self.sk_ratio > 0:  # ResNet-D: pad the bottom/right, 2x2 average, then a 1x1 conv
                s = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]]) if stride > 1 else x
                s = self._conv(tf.nn.avg_pool2d(s, 2, stride, "VALID" if stride > 1 else "SAME"), 4 * filters, 1, 1)
            else:
                s = self._conv(x, 4 * filters, 1, stride)
            shortcut = self._bn(s, relu=False)
        y = self._bn(self._conv(x, filters, 1, 1))
        y = self._sk_conv(y, filters, stride) if self.sk_ratio > 0 else self._bn(self._conv(y, filters, 3, stride))
        # small γ on the branch's last BN, as trained ResNets have (theirs start at 0): a random deep network with
        # full-size branches amplifies fp32 round-off from block to block, which no real checkpoint does
        y = self._bn(self._conv(y, 4 * filters, 1, 1), relu=False, gamma=(0.1, 0.4))
        return tf.nn.relu(y + shortcut)

    def _encoder(self, x, depth: int):
        blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}[depth]
        base = int(64 * self.width)
        if self.sk_ratio > 0:
            x = self._bn(self._conv(x, base // 2, 3, 2))
            x = self._bn(self._conv(x, base // 2, 3, 1))
            x = self._conv(x, base, 3, 1)
        else:
            x = self._conv(x, base, 7, 2)
        x = self.tf.nn.max_pool2d(self._bn(x), 3, 2, "SAME")
        for group, count in enumerate(blocks):
            for i in range(count):
                self.scope = f"resnet/block_group{group + 1}/bottleneck_block_{i}"
                x = self._bottleneck(x, base * 2 ** group, 2 if group > 0 and i == 0 else 1, projection=i == 0)
        return self.tf.reduce_mean(x, [1, 2])

    def variables(self, style: str) -> dict[str, np.ndarray]:
        """{name: value} as TF1 (``base_model/conv2d_3/kernel``) or the TF2 Keras model (global layer numbers,
        sync BN, ``projection_head``) names them."""
        names = {}
        for part, scope, kind, number, variable, value in self.entries:
            suffix = f"_{number}" if number else ""
            if style == "tf1":
                if part == "encoder":
                    name = f"base_model/{kind}{suffix}/{variable}"
                elif part == "supervised":
                    name = f"head_supervised/linear_layer/dense/{variable}"
                else:  # TF1 layers inside a variable scope number themselves within it
                    name = f"head_contrastive/nl_{part[1]}/{kind}/{variable}"
            else:
                kind = "sync_batch_normalization" if kind == "batch_normalization" else kind
                if part == "supervised":
                    scope = "head_supervised/linear_layer"
                elif part != "encoder":
                    scope = f"projection_head/nl_{part[1]}"
                name = f"{scope}/{kind}{suffix}/{variable}"
            names[name] = value
        return names


def write_tf1(tf, variables: dict[str, np.ndarray], folder: Path, step: int = 250228) -> Path:
    """A TF1 checkpoint (index + data, the format tf.compat.v1.train.Saver writes) named as the authors' are."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / f"model.ckpt-{step}"
    names = list(variables)
    tensors = [tf.constant(v) for v in variables.values()]
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{prefix.name}"\n')
    return prefix


def write_saved_model(tf, variables: dict[str, np.ndarray], folder: Path) -> Path:
    """A TF2 SavedModel whose variables carry the given names."""
    module = tf.Module()
    module.weights = [tf.Variable(value, name=name) for name, value in variables.items()]
    tf.saved_model.save(module, str(folder))
    return folder


def with_training_state(tf, variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a TF1 training checkpoint keeps beside the network: optimiser slots, EMA copies, the step."""
    extra = {"global_step": np.array(250228, dtype=np.int64)}
    for name in list(variables)[:5] + ["head_supervised/linear_layer/dense/kernel"]:
        extra[f"{name}/Momentum"] = np.zeros_like(variables[name])
        extra[f"ema_model/{name}"] = variables[name]
    return {**variables, **extra}


def images(seed: int, size: int, n: int = 4) -> np.ndarray:
    """Images that differ as photos do (brightness, contrast, colour, a gradient's direction), not only by
    pixel noise: with near-identical images a BN calibrated on them would blow up fp32 round-off."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(-1, 1, size)
    x = np.empty((n, size, size, 3))
    for i in range(n):
        angle = rng.uniform(0, 2 * np.pi)
        gradient = np.cos(angle) * ramp[None, :, None] + np.sin(angle) * ramp[:, None, None]
        x[i] = rng.uniform(0.2, 0.8, 3) + rng.uniform(0.1, 0.4) * gradient * rng.uniform(-1, 1, 3) \
            + rng.uniform(0.05, 0.3) * rng.normal(size=(size, size, 3))
    return np.clip(x, 0, 1).astype(np.float32)


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


R50 = {"depth": 50, "head_layers": 3, "proj_dim": 128, "num_classes": 1000, "head_layer": 1}
SK = {"depth": 50, "head_layers": 3, "proj_dim": 16, "num_classes": 10, "head_layer": 1}


@pytest.fixture(scope="module")
def r50(tf):
    """ResNet-50 1x without SK at 64 px (the stem's max-pool sees an even side)."""
    x = images(0, 64)
    reference = Reference(tf, seed=0, width=1)
    outputs, logits = reference.run(x, **R50)
    return x, reference, outputs, logits


@pytest.fixture(scope="module")
def sk(tf):
    """ResNet-50 0.25x with SK (ratio 0.0625) at 50 px: odd sides before the max-pool (25) and before a
    strided ResNet-D pool (7), where TF's padding differs most from PyTorch's."""
    x = images(1, 50)
    reference = Reference(tf, seed=1, width=0.25, sk_ratio=0.0625)
    outputs, logits = reference.run(x, **SK)
    return x, reference, outputs, logits


def run_import(capsys, checkpoint: Path, output: Path, *options: str) -> str:
    assert main(["import", str(checkpoint), "--output", str(output), *options]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def assert_pretrained_matches(run: Path, x: np.ndarray, outputs: list[np.ndarray]) -> None:
    _, model, _ = read_pretrained(run)
    with torch.no_grad():
        ours = model.eval().head.forward_layers(model.encoder.forward_features(nchw(x)))
    assert len(ours) == len(outputs)
    for j, (a, b) in enumerate(zip(ours, outputs, strict=True)):
        np.testing.assert_allclose(a.numpy(), b, rtol=0, atol=TOLERANCE, err_msg=f"head layer {j}")


def assert_logits_match(run: Path, x: np.ndarray, logits: np.ndarray) -> None:
    _, model, _ = read_classifier(run)
    with torch.no_grad():
        ours = model.eval()(nchw(x)).numpy()
    np.testing.assert_allclose(ours, logits, rtol=0, atol=TOLERANCE)


def test_resnet50_tf1_checkpoint_gives_the_reference_outputs(tf, r50, tmp_path, capsys):
    x, reference, outputs, logits = r50
    prefix = write_tf1(tf, with_training_state(tf, reference.variables("tf1")), tmp_path / "r50_1x_sk0")
    out = run_import(capsys, prefix, tmp_path / "pretrained")
    assert "ResNet-50 1x, TF pooling, 3-layer head" in out
    assert_pretrained_matches(tmp_path / "pretrained", x, outputs)
    run_import(capsys, prefix.parent, tmp_path / "classifier", "--what", "classifier", "--head-layer", "1")
    assert_logits_match(tmp_path / "classifier", x, logits)
    payload = load_checkpoint(tmp_path / "classifier")
    assert payload["classes"][:2] == ["tench", "goldfish"] and len(set(payload["classes"])) == 1000
    assert payload["image_size"] == 224 and payload["architecture"]["tf_pooling"] is True


@pytest.mark.parametrize("style", ["tf1", "tf2"])
def test_selective_kernel_network_gives_the_reference_outputs_in_both_formats(tf, sk, tmp_path, capsys, style):
    x, reference, outputs, logits = sk
    variables = reference.variables(style)
    checkpoint = (write_tf1(tf, variables, tmp_path / "ckpt") if style == "tf1"
                  else write_saved_model(tf, variables, tmp_path / "r50_sk" / "saved_model").parent)
    out = run_import(capsys, checkpoint, tmp_path / "pretrained")
    assert ("TF2 SavedModel" if style == "tf2" else "TF1 checkpoint") in out
    assert "ResNet-50 0.25x-SK0.0625, TF pooling, 3-layer head" in out
    assert_pretrained_matches(tmp_path / "pretrained", x, outputs)
    run_import(capsys, checkpoint, tmp_path / "classifier", "--what", "classifier", "--head-layer", "1")
    assert_logits_match(tmp_path / "classifier", x, logits)


def test_the_sk_ratio_is_read_off_gates_above_their_floor(tf, tmp_path, capsys):
    reference = Reference(tf, seed=2, width=0.25, sk_ratio=0.5)  # gates 32, 32, 32, 64 wide
    reference.run(images(2, 32, n=2), **SK)
    out = run_import(capsys, write_tf1(tf, reference.variables("tf1"), tmp_path / "ckpt"), tmp_path / "run")
    assert "ResNet-50 0.25x-SK0.5" in out


def test_training_state_is_skipped_by_printed_rules(tf, sk, tmp_path, capsys):
    variables = with_training_state(tf, sk[1].variables("tf1"))
    out = run_import(capsys, write_tf1(tf, variables, tmp_path / "ckpt"), tmp_path / "run")
    assert "skipped by rule: 6 optimiser slots" in out
    assert "skipped by rule: 6 exponential-moving-average copies" in out
    assert "skipped by rule: 1 training step counters" in out
    assert "skipped by rule: 2 the classifier (head_supervised)" in out  # a pretraining run holds no classifier
    assert f"{len(sk[1].entries) - 2} variables mapped" in out


def test_an_unknown_variable_is_named_in_a_refusal_and_nothing_is_written(tf, sk, tmp_path, capsys):
    variables = {**sk[1].variables("tf1"), "base_model/squeeze_excite/kernel": np.zeros((1, 1, 8, 2), np.float32)}
    prefix = write_tf1(tf, variables, tmp_path / "ckpt")
    assert main(["import", str(prefix), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "1 variables belong to no part of a SimCLRv2 network" in err and "base_model/squeeze_excite/kernel" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind, expected", [
    ("bert", "is a TF1 checkpoint but not a SimCLR one: none of its 2 variables is a layer of SimCLR's ResNet"),
    ("resnet_only", "holds a ResNet but no projection head"),
    ("no_checkpoint", "is not a TensorFlow checkpoint"),
])
def test_a_checkpoint_that_is_not_simclrv2s_gets_one_line(tf, sk, tmp_path, capsys, kind, expected):
    if kind == "bert":
        target = write_tf1(tf, {"bert/embeddings/word_embeddings": np.zeros((4, 2), np.float32),
                                "bert/pooler/dense/kernel": np.zeros((2, 2), np.float32)}, tmp_path / "bert")
    elif kind == "resnet_only":  # an encoder with its classifier and no head: as SimCLRv1's were released
        variables = {k: v for k, v in sk[1].variables("tf1").items() if not k.startswith("head_contrastive")}
        target = write_tf1(tf, variables, tmp_path / "v1")
    else:
        target = tmp_path / "photos"
        target.mkdir()
        (target / "a.txt").write_text("not a checkpoint")
    assert main(["import", str(target), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err
    assert not (tmp_path / "run").exists()


def test_the_head_layer_comes_from_the_authors_folder_or_must_be_given(tf, sk, tmp_path, capsys):
    variables = sk[1].variables("tf1")
    released = write_tf1(tf, variables, tmp_path / "finetuned_1pct" / "r50_0.25x_sk1")
    out = run_import(capsys, released, tmp_path / "from_folder")
    assert "classifier on head layer 1 over 10 classes" in out
    assert_logits_match(tmp_path / "from_folder", sk[0], sk[3])
    elsewhere = write_tf1(tf, variables, tmp_path / "copy")
    assert main(["import", str(elsewhere), "--output", str(tmp_path / "run"), "--what", "classifier"]) == 2
    assert "pass --head-layer" in capsys.readouterr().err
    assert main(["import", str(elsewhere), "--output", str(tmp_path / "run"), "--head-layer", "1"]) == 2
    assert "a pretraining run has no classifier: add --what classifier" in capsys.readouterr().err


def test_without_tensorflow_the_command_says_how_to_install_it(monkeypatch, tmp_path):
    from simclrv2.tf_import.reader import open_checkpoint

    (tmp_path / "model.ckpt-1.index").write_bytes(b"")
    monkeypatch.setitem(__import__("sys").modules, "tensorflow", None)  # import tensorflow -> ImportError
    with pytest.raises(SimCLRv2Error, match=r"^importing TensorFlow checkpoints needs TensorFlow: "
                                            r"pip install 'simclrv2\[tf\]'$"):
        open_checkpoint(tmp_path / "model.ckpt-1")


def _write_folder(folder: Path, classes: tuple[str, ...], per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        target = folder / c if c else folder
        target.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)).save(target / f"{c or 'img'}{i}.png")
    return folder


def test_imported_runs_finetune_predict_export_and_distill(tf, sk, tmp_path, capsys):
    prefix = write_tf1(tf, sk[1].variables("tf1"), tmp_path / "ckpt")
    pretrained, classifier = tmp_path / "pretrained", tmp_path / "classifier"
    run_import(capsys, prefix, pretrained, "--image-size", "48")  # small, so that training here is quick
    run_import(capsys, prefix, classifier, "--what", "classifier", "--head-layer", "1", "--image-size", "48")
    labelled = _write_folder(tmp_path / "labelled", ("cat", "dog"), 4, seed=0)
    unlabeled = _write_folder(tmp_path / "unlabeled", ("",), 6, seed=1)
    quick = ["--run.progress", "false", "--run.precision", "fp32", "--data.val_size", "0", "--data.dataset", "folder"]

    assert main(["finetune", "--run-dir", str(tmp_path / "ft"), "--finetune.pretrained", str(pretrained),
                 "--data.data_dir", str(labelled), "--finetune.labels", "2/class", "--finetune.epochs", "1",
                 "--finetune.min_steps", "0", "--finetune.batch_size", "4", *quick]) == 0
    assert read_classifier(tmp_path / "ft")[2]["image_size"] == 48

    assert main(["predict", "--checkpoint", str(classifier), str(unlabeled), "--output",
                 str(tmp_path / "p.csv")]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + 6
    assert main(["embed", "--checkpoint", str(pretrained), str(unlabeled), "--output", str(tmp_path / "emb")]) == 0
    assert np.load(tmp_path / "emb" / "features.npy").shape == (6, 512)  # ResNet-50 0.25x: 2048 · 0.25 features

    assert main(["export", "--checkpoint", str(classifier), "--output", str(tmp_path / "exported"), "--format",
                 "safetensors,pt2"]) == 0
    description = json.loads((tmp_path / "exported" / "model.json").read_text())
    assert description["architecture"]["tf_pooling"] is True
    assert description["preprocessing"]["mean"] is None and description["preprocessing"]["center_crop"] == 0.875
    assert (tmp_path / "exported" / "model.pt2").is_file()  # the TF pooling traces (loading it back is slow)
    x = nchw(images(3, 48))
    with torch.no_grad():
        exported = simclrv2.load(tmp_path / "exported")(x).numpy()
        np.testing.assert_allclose(exported, read_classifier(classifier)[1].eval()(x).numpy(), atol=1e-5)

    assert main(["distill", "--run-dir", str(tmp_path / "student"), "--distill.teacher", str(classifier),
                 "--distill.student_pretrained", str(pretrained), "--data.data_dir", str(unlabeled),
                 "--distill.epochs", "1", "--distill.batch_size", "3", *quick]) == 0
    assert read_classifier(tmp_path / "student")[0] == read_classifier(classifier)[0]
