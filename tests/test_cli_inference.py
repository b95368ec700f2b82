import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import simclrv2
from inference_helpers import CLASSES, write_classifier_run
from simclrv2.cli import main


def _write_images(folder, names, size=(20, 24), seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return folder


@pytest.fixture()
def unlabeled(tmp_path):
    """A flat folder of images, no labels, plus a nested one and a grey image: predict must take them all."""
    return _write_images(tmp_path / "photos", ["b.png", "a.jpg", "trip/c.png", ".hidden/d.png"])


def test_predict_writes_one_row_per_image_of_an_unlabeled_folder(classifier_run, unlabeled, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    assert main(["predict", "--checkpoint", str(classifier_run), str(unlabeled), "--output", str(out),
                 "--batch-size", "2"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["image"] for r in rows] == ["a.jpg", "b.png", "trip/c.png"]  # sorted, hidden skipped
    assert list(rows[0]) == ["image", "prediction", "probability", *(f"p_{c}" for c in CLASSES)]
    model = simclrv2.load(classifier_run)
    expected = model.predict([Image.open(unlabeled / r["image"]) for r in rows])
    for row, p in zip(rows, expected, strict=True):
        assert row["prediction"] == CLASSES[int(p.argmax())]
        np.testing.assert_allclose([float(row[f"p_{c}"]) for c in CLASSES], p.numpy(), atol=1e-5)
    assert "Traceback" not in capsys.readouterr().err


def test_predict_and_embed_commands_run_exact_fp32_math(classifier_run, unlabeled, tmp_path):
    """The commands own their process, so fp32 is exact there as in training: PyTorch's default of TF32 for cuDNN's
    convolutions is turned off (the flag exists without a GPU)."""
    from simclrv2.runtime import set_fp32_math

    try:
        for command, output in (("predict", tmp_path / "p.csv"), ("embed", tmp_path / "e")):
            torch.backends.cudnn.allow_tf32 = True  # PyTorch's default
            assert main([command, "--checkpoint", str(classifier_run), str(unlabeled), "--output", str(output)]) == 0
            assert torch.backends.cudnn.allow_tf32 is False, command
    finally:
        set_fp32_math("fp32")


def test_predict_runs_the_compiled_kernels_unless_told_not_to_and_restores_the_switch(
        classifier_run, unlabeled, tmp_path, kernels, unfused, monkeypatch):
    from simclrv2.models import bn_relu, cpu_kernels

    calls = []
    evaluated = bn_relu._evaluated
    monkeypatch.setattr(bn_relu, "_evaluated", lambda *args, **kwargs: calls.append(1) or evaluated(*args, **kwargs))
    on, off = tmp_path / "on.csv", tmp_path / "off.csv"
    assert main(["predict", "--checkpoint", str(classifier_run), str(unlabeled), "--output", str(on)]) == 0
    assert calls, "predict ran PyTorch's BatchNorm instead of the one-pass kernel"
    assert cpu_kernels.active_kernels() is None  # as this process had it before the command
    count = len(calls)
    assert main(["predict", "--checkpoint", str(classifier_run), str(unlabeled), "--output", str(off),
                 "--no-fused-kernels"]) == 0
    assert len(calls) == count
    with_kernels, without = list(csv.DictReader(on.open())), list(csv.DictReader(off.open()))
    assert [r["image"] for r in with_kernels] == [r["image"] for r in without]
    for a, b in zip(with_kernels, without, strict=True):
        np.testing.assert_allclose([float(a[f"p_{c}"]) for c in CLASSES], [float(b[f"p_{c}"]) for c in CLASSES],
                                   atol=1e-5)


def test_embed_with_the_kernels_leaves_a_session_s_kernels_on(pretrain_run, unlabeled, tmp_path, fused):
    from simclrv2.models import cpu_kernels

    assert main(["embed", "--checkpoint", str(pretrain_run), str(unlabeled), "--output", str(tmp_path / "a"),
                 "--no-fused-kernels"]) == 0
    assert cpu_kernels.active_kernels() is fused
    assert main(["embed", "--checkpoint", str(pretrain_run), str(unlabeled), "--output", str(tmp_path / "b")]) == 0
    assert cpu_kernels.active_kernels() is fused
    np.testing.assert_allclose(np.load(tmp_path / "a" / "features.npy"), np.load(tmp_path / "b" / "features.npy"),
                               rtol=1e-4, atol=1e-5)


def test_predict_top_k_as_json_lines(classifier_run, unlabeled, tmp_path):
    out = tmp_path / "pred.jsonl"
    assert main(["predict", "--checkpoint", str(classifier_run), str(unlabeled), "--output", str(out),
                 "--top-k", "2"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        top = record["top_k"]
        assert len(top) == 2 and top[0]["class"] == record["prediction"]
        assert top[0]["probability"] >= top[1]["probability"]


def test_predict_prints_csv_without_output_and_no_progress_bar_off_a_terminal(classifier_run, unlabeled, capsys):
    assert main(["predict", "--checkpoint", str(classifier_run), str(unlabeled / "trip")]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1].startswith("c.png,")
    assert "\r" not in captured.err and "img/s" not in captured.err


def test_the_kernels_build_message_stays_off_a_csv_on_stdout(classifier_run, unlabeled, kernels, unfused,
                                                              monkeypatch, capsys):
    """A first predict on a machine compiles the kernels and says so: that line must not land in the CSV."""
    from simclrv2.logs import get_logger
    from simclrv2.models import cpu_kernels

    def build_and_say_so():
        get_logger().info("compiled CPU kernels: loading")
        return kernels

    monkeypatch.setattr(cpu_kernels, "build_kernels", build_and_say_so)
    assert main(["predict", "--checkpoint", str(classifier_run), str(unlabeled / "trip")]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith("image,prediction,") and len(captured.out.splitlines()) == 2
    assert "compiled CPU kernels: loading" in captured.err


def test_predict_reads_a_dataset_split_with_its_ids(tiny_fashion, tmp_path):
    run = write_classifier_run(tmp_path / "grey", image_size=28, channels=1, classes=tuple("0123456789"))
    out = tmp_path / "pred.csv"
    assert main(["predict", "--checkpoint", str(run), "fashion-mnist:test", "--data-dir", str(tiny_fashion),
                 "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 200 and rows[0]["image"] == "00000" and rows[-1]["image"] == "00199"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nowhere"], "neither a folder nor an image file nor DATASET:SPLIT"),
        (["{images}", "--output", "x.txt"], "must end in .csv or .jsonl"),
        (["{images}", "--top-k", "-1"], "--top-k must be >= 0"),
    ],
)
def test_predict_bad_input_gives_one_line(classifier_run, unlabeled, capsys, argv, message):
    argv = [a.replace("{images}", str(unlabeled)) for a in argv]
    assert main(["predict", "--checkpoint", str(classifier_run), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_predict_with_a_pretrained_encoder_points_to_embed(pretrain_run, unlabeled, capsys):
    assert main(["predict", "--checkpoint", str(pretrain_run), str(unlabeled)]) == 2
    assert "simclrv2 embed" in capsys.readouterr().err


def test_embed_writes_features_and_an_index_in_the_same_order(pretrain_run, unlabeled, tmp_path):
    out = tmp_path / "emb"
    assert main(["embed", "--checkpoint", str(pretrain_run), str(unlabeled), "--output", str(out),
                 "--layer", "1", "--normalize"]) == 0
    features = np.load(out / "features.npy")
    index = (out / "index.txt").read_text().splitlines()
    assert index == ["a.jpg", "b.png", "trip/c.png"]
    model = simclrv2.load(pretrain_run)
    expected = model.embed([Image.open(unlabeled / name) for name in index], layer=1, normalize=True)
    np.testing.assert_allclose(features, expected.numpy(), atol=1e-5)
    assert json.loads((out / "embedding.json").read_text())["shape"] == [3, 64]  # hidden width 512 x 0.125


def test_embed_and_predict_take_a_precision_and_embed_records_it(pretrain_run, classifier_run, unlabeled, tmp_path):
    for precision in ("bf16", "auto"):
        out = tmp_path / precision
        assert main(["embed", "--checkpoint", str(pretrain_run), str(unlabeled), "--output", str(out),
                     "--precision", precision]) == 0
        recorded = json.loads((out / "embedding.json").read_text())["precision"]
        assert recorded == "bf16" if precision == "bf16" else recorded in ("bf16", "fp32")
    exact, reduced = tmp_path / "fp32.csv", tmp_path / "bf16.csv"
    assert main(["predict", "--checkpoint", str(classifier_run), str(unlabeled), "--output", str(exact)]) == 0
    assert main(["predict", "--checkpoint", str(classifier_run), str(unlabeled), "--output", str(reduced),
                 "--precision", "bf16"]) == 0
    p_exact = [[float(r[f"p_{c}"]) for c in CLASSES] for r in csv.DictReader(exact.open())]
    p_reduced = [[float(r[f"p_{c}"]) for c in CLASSES] for r in csv.DictReader(reduced.open())]
    assert p_exact != p_reduced
    np.testing.assert_allclose(p_reduced, p_exact, atol=0.03)


def test_embed_knn_labels_each_image_by_its_labelled_neighbours(pretrain_run, tmp_path):
    labelled = tmp_path / "labelled"
    _write_images(labelled, [f"red/{i}.png" for i in range(3)], seed=1)
    _write_images(labelled, [f"blue/{i}.png" for i in range(3)], seed=2)
    # Queries: copies of two labelled images, whose nearest neighbour (similarity 1) is themselves.
    queries = tmp_path / "queries"
    queries.mkdir()
    (queries / "x.png").write_bytes((labelled / "red/0.png").read_bytes())
    (queries / "y.png").write_bytes((labelled / "blue/2.png").read_bytes())
    out = tmp_path / "emb"
    assert main(["embed", "--checkpoint", str(pretrain_run), str(queries), "--output", str(out),
                 "--knn", str(labelled), "--knn-k", "1"]) == 0
    rows = list(csv.DictReader((out / "knn.csv").open()))
    assert [(r["image"], r["prediction"]) for r in rows] == [("x.png", "red"), ("y.png", "blue")]


def _cut(path):
    """The image truncated after its header: it opens, but cannot be decoded (a half-copied file)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture()
def with_a_cut_image(tmp_path):
    folder = _write_images(tmp_path / "photos", ["a.png", "b.png", "c.png"], size=(64, 64))
    _cut(folder / "b.png")
    return folder


def test_predict_skips_an_unreadable_image_with_one_warning_as_training_does(classifier_run, with_a_cut_image,
                                                                             capsys):
    assert main(["predict", "--checkpoint", str(classifier_run), str(with_a_cut_image), "--batch-size", "2"]) == 0
    out, err = capsys.readouterr()
    assert [row["image"] for row in csv.DictReader(out.splitlines())] == ["a.png", "c.png"]  # stdout: only CSV
    skipped = [line for line in err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "read 2 images; skipped 1 unreadable image (b.png; first error:" in skipped[0]


def test_embed_skips_an_unreadable_image_and_its_index_follows_the_rows(pretrain_run, with_a_cut_image, tmp_path,
                                                                       capsys):
    out = tmp_path / "emb"
    assert main(["embed", "--checkpoint", str(pretrain_run), str(with_a_cut_image), "--output", str(out)]) == 0
    assert (out / "index.txt").read_text().splitlines() == ["a.png", "c.png"]
    assert np.load(out / "features.npy").shape[0] == 2
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable image (b.png" in printed and "embedded 2 images" in printed


@pytest.mark.parametrize("command", ["predict", "embed"])
def test_a_folder_without_a_readable_image_is_one_line_and_leaves_the_output_alone(
        classifier_run, pretrain_run, tmp_path, capsys, command):
    folder = _write_images(tmp_path / "photos", ["a.png", "b.png"], size=(64, 64))
    for name in ("a.png", "b.png"):
        _cut(folder / name)
    checkpoint, output = ((classifier_run, tmp_path / "old.csv") if command == "predict"
                          else (pretrain_run, tmp_path / "emb"))
    if command == "predict":
        output.write_text("the user's earlier predictions\n")
    assert main([command, "--checkpoint", str(checkpoint), str(folder), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "none of the 2 image files" in err and "a.png, b.png" in err and err.count("\n") == 1
    if command == "predict":
        assert output.read_text() == "the user's earlier predictions\n"
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    else:
        assert not output.exists()


@pytest.mark.parametrize("command", ["predict", "embed", "export"])
def test_an_output_that_cannot_be_created_is_one_line(classifier_run, unlabeled, tmp_path, capsys, command):
    (tmp_path / "a-file").write_text("")
    output = tmp_path / "a-file" / ("out.csv" if command == "predict" else "out")
    images = [] if command == "export" else [str(unlabeled)]
    assert main([command, "--checkpoint", str(classifier_run), *images, "--output", str(output),
                 *(["--format", "safetensors"] if command == "export" else [])]) == 2
    err = capsys.readouterr().err
    assert "cannot create" in err and "a-file" in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow  # the first ONNX export of a process takes several seconds
def test_export_cli_writes_every_format_and_loads_back(classifier_run, tmp_path, capfd):
    pytest.importorskip("onnxscript")
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(classifier_run), "--output", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"model.json", "model.safetensors", "model.onnx", "model.pt2"}
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(simclrv2.load(out)(x), simclrv2.load(classifier_run)(x))
    assert "[torch.onnx]" not in capfd.readouterr().out  # no exporter progress lines


def test_export_of_a_pretrained_run_as_a_classifier_says_use_encoder(pretrain_run, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(pretrain_run), "--output", str(tmp_path / "x"),
                 "--what", "classifier"]) == 2
    assert "--what encoder" in capsys.readouterr().err
