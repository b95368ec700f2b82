import numpy as np
import pytest
import torch
from PIL import Image

import simclrv2
from inference_helpers import CLASSES
from simclrv2.errors import SimCLRv2Error
from simclrv2.inference import Preprocessing
from simclrv2.inference.preprocess import pil_square


def _images(n: int = 4, size: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def test_load_reads_size_channels_and_classes_from_the_checkpoint(classifier_run):
    model = simclrv2.load(classifier_run)
    assert model.preprocess == Preprocessing(16, 3)
    assert model.classes == CLASSES
    assert not model.training


def test_predict_gives_the_softmax_of_the_classifier_logits(classifier_run):
    model = simclrv2.load(classifier_run)
    images = _images()
    probabilities = model.predict(images)
    assert probabilities.shape == (4, 3)
    expected = model(images.float() / 255).softmax(1)  # 16 px: no centre crop, no resize
    torch.testing.assert_close(probabilities, expected)
    assert not torch.allclose(probabilities[0], probabilities[1])  # the weights are not trivial


def test_predict_and_embed_run_the_compiled_kernels_by_default_and_leave_the_switch_as_it_was(
        classifier_run, kernels, unfused, monkeypatch):
    from simclrv2.models import bn_relu, cpu_kernels

    calls = []
    evaluated = bn_relu._evaluated
    monkeypatch.setattr(bn_relu, "_evaluated", lambda *args, **kwargs: calls.append(1) or evaluated(*args, **kwargs))
    model = simclrv2.load(classifier_run)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    images = _images(n=6)
    fused = model.predict(images)
    assert calls, "predict ran PyTorch's BatchNorm instead of the one-pass kernel"
    features = model.embed(images, layer=1)
    count = len(calls)
    assert count > 1 and cpu_kernels.active_kernels() is None  # the switch as it was before the calls
    # the weights keep their layout and values, and still train
    assert all(p.is_contiguous() for p in model.parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, weights[name], rtol=0, atol=0)
    model(images.float() / 255).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    torch.testing.assert_close(fused, model.predict(images, fused_kernels=False), rtol=0, atol=1e-5)
    torch.testing.assert_close(features, model.embed(images, layer=1, fused_kernels=False), rtol=1e-4, atol=1e-5)
    assert len(calls) == count  # fused_kernels=False: PyTorch's ops


def test_predict_and_embed_in_bf16_run_the_network_in_bf16_and_stay_near_float32(classifier_run, pretrain_run):
    model = simclrv2.load(classifier_run)
    images = _images(8)
    seen = []
    model.classifier.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    exact, reduced = model.predict(images), model.predict(images, precision="bf16")
    assert seen == [torch.float32, torch.bfloat16]
    assert reduced.dtype == torch.float32 and not torch.equal(reduced, exact)
    torch.testing.assert_close(reduced, exact, atol=0.03, rtol=0)  # bf16's 8 bits through 18 layers
    encoder = simclrv2.load(pretrain_run)
    features = encoder.embed(images, precision="bf16")
    assert features.dtype == torch.float32
    torch.testing.assert_close(features, encoder.embed(images), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("precision", ["fp16", "bf16-math", "float32"])
def test_an_unknown_inference_precision_lists_the_valid_ones(classifier_run, precision):
    with pytest.raises(SimCLRv2Error, match="fp32, bf16, auto"):
        simclrv2.load(classifier_run).predict(_images(1), precision=precision)


def test_pil_images_arrays_and_tensors_give_the_same_predictions(classifier_run):
    model = simclrv2.load(classifier_run)
    images = _images(2)
    arrays = [im.permute(1, 2, 0).numpy() for im in images]  # HWC uint8
    pils = [Image.fromarray(a) for a in arrays]
    from_tensor = model.predict(images)
    torch.testing.assert_close(model.predict(arrays), from_tensor)
    torch.testing.assert_close(model.predict(pils), from_tensor)
    torch.testing.assert_close(model.predict(images.float() / 255), from_tensor)
    torch.testing.assert_close(model.predict(np.stack(arrays)), from_tensor)


def test_grey_input_is_repeated_for_an_rgb_network(classifier_run):
    model = simclrv2.load(classifier_run)
    grey = _images(1, channels=1)
    torch.testing.assert_close(model.predict(grey), model.predict(grey.expand(-1, 3, -1, -1)))


def test_embed_gives_encoder_or_head_layer_features(pretrain_run):
    model = simclrv2.load(pretrain_run)
    images = _images()
    x = images.float() / 255
    torch.testing.assert_close(model.embed(images), model.encoder.forward_features(x))
    layer2 = model.embed(images, layer=2, normalize=True)
    assert layer2.shape == (4, 16)
    torch.testing.assert_close(layer2, torch.nn.functional.normalize(model.head(model.encoder.forward_features(x))))
    torch.testing.assert_close(layer2.norm(dim=1), torch.ones(4))


def test_embed_refuses_a_layer_the_model_does_not_hold(classifier_run):
    with pytest.raises(SimCLRv2Error, match="head layers 0 .* to 1"):
        simclrv2.load(classifier_run).embed(_images(), layer=2)


def test_predict_on_a_pretrained_encoder_says_to_use_embed(pretrain_run):
    with pytest.raises(SimCLRv2Error, match="use embed"):
        simclrv2.load(pretrain_run).predict(_images())


def test_large_images_are_squared_resized_and_centre_cropped_above_32_px():
    prep = Preprocessing(image_size=40, channels=3)
    wide = torch.zeros(1, 3, 40, 60, dtype=torch.uint8)
    wide[..., :, 10:50] = 255  # the centred 40 x 40 square is white, the sides black
    x = prep(wide)
    assert x.shape == (1, 3, 40, 40)
    torch.testing.assert_close(x, torch.ones_like(x))
    border = torch.zeros(1, 1, 40, 40, dtype=torch.uint8)
    border[..., 2:38, 2:38] = 255  # a 2 px black frame lies outside the 87.5 % crop (35 px)
    assert Preprocessing(40, 1)(border).min() == 1.0
    assert Preprocessing(32, 1)(border[..., 4:36, 4:36]).min() == 1.0  # and at 32 px nothing is cropped
    assert Preprocessing(32, 1)(border[..., :32, :32]).min() == 0.0


def test_pil_images_are_resized_like_the_folder_reader(tmp_path):
    from simclrv2.data.folder import decode_image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as image:
        ours = pil_square(image, 16, 3)[0]
    np.testing.assert_array_equal(ours, decode_image(tmp_path / "a.png", 16, "RGB").transpose(2, 0, 1))


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ("cat.png", "cannot read images of type str"),
        (torch.rand(1, 3, 8, 8) * 255, "must lie in \\[0, 1\\]"),
        (np.zeros((8, 8, 5), dtype=np.uint8), "C = 1, 3 or 4"),
        ([], "no images given"),
    ],
)
def test_bad_images_give_one_clear_error(classifier_run, images, message):
    with pytest.raises(SimCLRv2Error, match=message):
        simclrv2.load(classifier_run).predict(images)


def test_load_of_a_missing_path_says_what_to_pass(tmp_path):
    with pytest.raises(SimCLRv2Error, match="run directory, a checkpoint file or an export"):
        simclrv2.load(tmp_path / "nothing")


def test_the_readmes_python_lines_classify_a_folder_as_the_trained_network_does(tmp_path, monkeypatch, finetuned,
                                                                                tiny_fashion):
    """The README's "Classify a folder of images" block, run as written on a fine-tuned run of the tiny data: its
    labels are the network's own predictions (found here without the inference API), and they tell classes apart."""
    from pathlib import Path

    from simclrv2.checkpoint import classifier_from, load_checkpoint
    from simclrv2.data import load_dataset

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("Classify a folder of images", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    Path("runs/demo").mkdir(parents=True)
    Path("runs/demo/finetune-1pct-layer1").symlink_to(finetuned[0])
    test = load_dataset("fashion-mnist", "test", data_dir=tiny_fashion).subset(range(10))  # one image per class
    Path("my_images").mkdir()
    for i, image in enumerate(test.images):
        Image.fromarray(image[0].numpy()).save(f"my_images/{i}.png")  # grey, 28 px: the network's own format
    namespace: dict = {}
    exec(block, namespace)

    _, network = classifier_from(load_checkpoint(finetuned[0]), "the fine-tuned run")
    with torch.no_grad():
        expected = [test.classes[k] for k in network.eval()(test.images.float() / 255).argmax(1)]
    assert namespace["labels"] == expected and len(set(expected)) >= 3
    probabilities = namespace["probabilities"]
    assert probabilities.shape == (10, 10)  # "(N, classes), rows sum to 1"
    torch.testing.assert_close(probabilities.sum(1), torch.ones(10))
