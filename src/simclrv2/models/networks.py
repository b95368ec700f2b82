"""The composed networks: what pretraining trains, and what fine-tuning, distillation and supervised train."""

from __future__ import annotations

from torch import Tensor, nn

from simclrv2.errors import SimCLRv2Error
from simclrv2.models.head import ProjectionHead
from simclrv2.models.resnet import ResNet, resnet


class SimCLRModel(nn.Module):
    """Encoder + projection head."""

    def __init__(self, encoder: ResNet, head: ProjectionHead) -> None:
        super().__init__()
        if head.in_dim != encoder.feature_dim:
            raise SimCLRv2Error(
                f"projection head expects {head.in_dim} inputs but the encoder gives {encoder.feature_dim}; "
                "build the head with in_dim=encoder.feature_dim"
            )
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images → (B, out_dim) projections (not normalised)."""
        return self.head(self.encoder.forward_features(x))


class Classifier(nn.Module):
    """Encoder + head layers 1…j + a zero-initialised linear classifier (docs/recipe.md#fine-tuning).

    Zero init makes the first logits all zero: fine-tuning starts from uniform predictions instead of a random
    guess that would first have to be unlearned, and the first gradients flow only into the classifier.
    """

    def __init__(self, encoder: ResNet, head_layers: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise SimCLRv2Error(f"num_classes must be an integer >= 1, got {num_classes!r}")
        self.encoder = encoder
        self.head = head_layers
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.classifier = nn.Linear(feature_dim, num_classes)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, feature_dim): the input of the classifier."""
        return self.head(self.encoder.forward_features(x))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, num_classes) logits."""
        return self.classifier(self.forward_features(x))

    @classmethod
    def from_simclr(cls, model: SimCLRModel, head_layer: int, num_classes: int) -> Classifier:
        """Fine-tune from head layer j: keeps the (shared, not copied) encoder and head layers 1…j."""
        head = model.head
        return cls(model.encoder, head.truncated(head_layer), head.output_dim(head_layer), num_classes)


def build_simclr_model(
    depth: int,
    width_multiplier: float = 1,
    sk_ratio: float = 0.0,
    cifar_stem: bool = False,
    in_channels: int = 3,
    head_layers: int = 3,
    proj_dim: int = 128,
    tf_pooling: bool = False,
) -> SimCLRModel:
    """ResNet encoder + a ``head_layers``-deep projection head whose hidden width is the encoder's."""
    encoder = resnet(depth, width_multiplier, sk_ratio, cifar_stem, in_channels, tf_pooling)
    head = ProjectionHead(encoder.feature_dim, out_dim=proj_dim, num_layers=head_layers)
    return SimCLRModel(encoder, head)


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements (works on the meta device, so huge models can be counted unallocated)."""
    return sum(p.numel() for p in module.parameters())
