"""A trained network ready for use: images in, class probabilities or features out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclrv2.errors import SimCLRv2Error
from simclrv2.inference.preprocess import ImageInput, Preprocessing
from simclrv2.inference.spec import InferenceSpec
from simclrv2.models import cpu_kernels
from simclrv2.runtime import autocast

# What inference runs in: float32 (the default: full precision, whatever the network trained in), bf16 autocast, or
# auto (bf16 where the hardware runs it fast, as training's run.precision = "auto").
PRECISIONS = ("fp32", "bf16", "auto")


class LoadedModel(nn.Module):
    """Encoder + projection-head layers 1…j (+ a linear classifier), in eval mode.

    ``forward`` takes the prepared float batch (what ``preprocess`` returns, and what an export takes) and
    gives logits, or the layer-j features when there is no classifier. ``predict`` and ``embed`` take raw
    images and do the preprocessing themselves.
    """

    def __init__(self, encoder: nn.Module, head: nn.Sequential, classifier: nn.Linear | None,
                 spec: InferenceSpec) -> None:
        super().__init__()
        if len(head) != spec.head_layers or (classifier is None) != (not spec.classes):
            raise SimCLRv2Error(f"{spec.source}: the network does not match its description")
        self.encoder = encoder
        self.head = head
        self.classifier = classifier
        self.spec = spec
        self.eval()

    @property
    def preprocess(self) -> Preprocessing:
        return self.spec.preprocessing

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def features(self, x: Tensor, layer: int | None = None) -> Tensor:
        """(B, C, S, S) prepared images -> (B, D) output of head layer ``layer`` (0: the encoder output;
        None: the last layer this model holds)."""
        layer = len(self.head) if layer is None else self._check_layer(layer)
        h = self.encoder.forward_features(x)
        for block in self.head[:layer]:
            h = block(h)
        return h

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, S, S) prepared images -> (B, classes) logits, or (B, D) features without a classifier."""
        h = self.features(x)
        return h if self.classifier is None else self.classifier(h)

    @torch.inference_mode()
    def predict(self, images: ImageInput, batch_size: int = 256, precision: str = "fp32",
                fused_kernels: bool = True) -> Tensor:
        """(N, classes) class probabilities of raw images (PIL, arrays or tensors), on the CPU, computed in
        ``precision`` (``PRECISIONS``), with the compiled kernels on a CPU unless ``fused_kernels`` is False."""
        if self.classifier is None:
            raise SimCLRv2Error(f"{self.spec.source} is a pretrained encoder without a classifier: use embed(), "
                                "or load a fine-tuned, supervised or distilled run to predict classes")
        return self._batched(images, batch_size, lambda x: self(x).float().softmax(dim=1), precision, fused_kernels)

    @torch.inference_mode()
    def embed(self, images: ImageInput, layer: int = 0, normalize: bool = False, batch_size: int = 256,
              precision: str = "fp32", fused_kernels: bool = True) -> Tensor:
        """(N, D) float32 features of raw images at head layer ``layer`` (0: the encoder output), on the CPU;
        L2-normalised when ``normalize`` (what cosine kNN and retrieval use); computed in ``precision``, with the
        compiled kernels on a CPU unless ``fused_kernels`` is False."""
        self._check_layer(layer)

        def run(x: Tensor) -> Tensor:
            h = self.features(x, layer).float()
            return F.normalize(h, dim=1) if normalize else h

        return self._batched(images, batch_size, run, precision, fused_kernels)

    def _batched(self, images: ImageInput, batch_size: int, run, precision: str, fused: bool) -> Tensor:
        """``run`` over the prepared images batch by batch. On a CPU with ``fused`` the compiled kernels run (built
        once per machine, then cached; the process's switch is put back afterwards) on channels_last batches, whose
        layout the convolutions pass on: the evaluation BatchNorm-ReLU kernel and our convolutions take that
        layout. This model's weights keep theirs: laid out channels_last too, they made no difference measurable
        in benchmarks/predict_ab.py (1.36x against 1.37x PyTorch's ops at width 0.25, 1.51x against 1.53x at
        width 1, in one session on an AMD EPYC)."""
        if precision not in PRECISIONS:
            raise SimCLRv2Error(f"precision {precision!r} is not one of {', '.join(PRECISIONS)} (auto: bf16 where "
                                "the hardware runs it fast, else fp32)")
        x = self.preprocess(images)  # (N, C, S, S) float in [0, 1]
        device = self.device
        with cpu_kernels.fused_kernels(device.type == "cpu" and fused) as on, autocast(device, precision):
            layout = torch.channels_last if on else torch.contiguous_format
            return torch.cat([run(x[i:i + batch_size].to(device).contiguous(memory_format=layout)).cpu()
                              for i in range(0, x.shape[0], batch_size)])

    def _check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or not 0 <= layer <= len(self.head):
            raise SimCLRv2Error(f"layer {layer!r} is not available: this model holds head layers 0 (encoder output) "
                                f"to {len(self.head)}")
        return layer

    def truncated(self, layer: int | None = None, classifier: bool = True) -> LoadedModel:
        """The same weights (shared) up to head layer ``layer``, with or without the classifier: what an
        export holds. The classifier needs every head layer it was trained on."""
        layer = len(self.head) if layer is None else self._check_layer(layer)
        keep = classifier and self.classifier is not None
        if keep and layer != len(self.head):
            raise SimCLRv2Error(f"the classifier sits on head layer {len(self.head)}; export it with that layer "
                                "or export the encoder (--what encoder) at another layer")
        spec = InferenceSpec(self.spec.architecture, layer, self.spec.classes if keep else (), self.preprocess,
                         self.spec.source)
        return LoadedModel(self.encoder, nn.Sequential(*self.head[:layer]), self.classifier if keep else None, spec)
