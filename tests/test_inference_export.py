import json

import numpy as np
import pytest
import torch

import simclrv2
from inference_helpers import CLASSES, write_classifier_run, write_pretrain_run
from simclrv2.errors import SimCLRv2Error
from simclrv2.inference import export_model
from simclrv2.inference.export import ONNX_OPSET, parse_formats


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return simclrv2.load(write_classifier_run(tmp_path_factory.mktemp("finetune"), image_size=40))


def _batch(n: int, size: int = 40) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(n))


def test_safetensors_export_loads_back_with_the_same_outputs_and_preprocessing(classifier, tmp_path):
    export_model(classifier, tmp_path, ("safetensors",))
    loaded = simclrv2.load(tmp_path)
    x = _batch(3)
    torch.testing.assert_close(loaded(x), classifier(x))
    assert loaded.classes == CLASSES and loaded.preprocess == classifier.preprocess
    images = torch.randint(0, 256, (2, 3, 50, 60), dtype=torch.uint8)
    torch.testing.assert_close(loaded.predict(images), classifier.predict(images))


def test_model_json_states_the_input_the_exports_expect(classifier, tmp_path):
    export_model(classifier, tmp_path, ("safetensors",))
    spec = json.loads((tmp_path / "model.json").read_text())
    assert spec["preprocessing"]["image_size"] == 40 and spec["preprocessing"]["channels"] == 3
    assert spec["preprocessing"]["mean"] is None and spec["preprocessing"]["center_crop"] == 0.875
    assert spec["classes"] == list(CLASSES) and spec["head_layers"] == 1
    assert spec["input"]["shape"] == ["batch", 3, 40, 40]
    assert spec["output"] == {"name": "logits", "shape": ["batch", 3]}


def test_an_encoder_export_at_a_head_layer_gives_that_layers_features(tmp_path):
    model = simclrv2.load(write_pretrain_run(tmp_path / "run"))
    export_model(model.truncated(layer=1), tmp_path / "out", ("safetensors",))
    loaded = simclrv2.load(tmp_path / "out" / "model.json")
    x = _batch(2, 16)
    torch.testing.assert_close(loaded(x), model.features(x, layer=1))
    assert loaded.classifier is None and len(loaded.head) == 1


def test_the_classifier_cannot_be_cut_below_its_head_layer(classifier):
    with pytest.raises(SimCLRv2Error, match="--what encoder"):
        classifier.truncated(layer=0)


def test_pt2_export_gives_the_same_outputs_for_any_batch_size(classifier, tmp_path):
    written = export_model(classifier, tmp_path, ("pt2",))
    program = torch.export.load(str(written["pt2"])).module()
    for n in (1, 5):
        torch.testing.assert_close(program(_batch(n)), classifier(_batch(n)), rtol=1e-4, atol=1e-5)


def test_onnx_export_gives_the_same_outputs_for_any_batch_size(classifier, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    written = export_model(classifier, tmp_path, ("onnx",))
    session = ort.InferenceSession(str(written["onnx"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    for n in (1, 5):
        (logits,) = session.run(None, {"images": _batch(n).numpy()})
        np.testing.assert_allclose(logits, classifier(_batch(n)).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "model.json").read_text())["onnx_opset"] == ONNX_OPSET


def test_unknown_export_format_lists_the_valid_ones():
    with pytest.raises(SimCLRv2Error, match="safetensors, onnx, pt2"):
        parse_formats("safetensors,torchscript")


@pytest.mark.filterwarnings("error:No complete tensor")  # torch.export saving channels_last weights
def test_pt2_export_with_the_compiled_kernels_on_holds_pytorchs_ops_only(tmp_path, fused):
    """A training session in the same process leaves the kernels on; torch.export must still trace PyTorch's ops
    (a call into the extension would make a program that cannot run without simclrv2), with channels_last
    weights as the stages lay them out."""
    model = simclrv2.load(write_classifier_run(tmp_path / "run", image_size=40)).to(memory_format=torch.channels_last)
    written = export_model(model, tmp_path / "export", ("pt2",))
    program = torch.export.load(str(written["pt2"]))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not [t for t in targets if "simclrv2" in t or "bn_relu" in t]
    assert any("conv2d" in t for t in targets) and any("batch_norm" in t for t in targets)
    for n in (1, 5):
        torch.testing.assert_close(program.module()(_batch(n)), model(_batch(n)), rtol=1e-4, atol=1e-5)
    assert model.encoder.stages[0][0].residual[0].weight.is_contiguous(memory_format=torch.channels_last)  # as it was
