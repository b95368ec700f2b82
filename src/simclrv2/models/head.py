"""SimCLRv2's projection head: k × (Linear + BN (+ ReLU)), readable layer by layer.

Fine-tuning starts from head layer j (docs/recipe.md#projection-head), so the head exposes every layer's output and its
first j layers as a module.
"""

from __future__ import annotations

from torch import Tensor, nn

from simclrv2.errors import SimCLRv2Error


def _head_layer(in_dim: int, out_dim: int, last: bool) -> nn.Sequential:
    # No Linear bias: the BN right after it removes any constant offset.
    bn = nn.BatchNorm1d(out_dim)
    if last:
        # No β in the last BN (docs/recipe.md#projection-head): the loss normalises, and an offset shared by every
        # projection only pulls all of them towards one direction without helping tell images apart.
        bn.register_parameter("bias", None)
        return nn.Sequential(nn.Linear(in_dim, out_dim, bias=False), bn)
    return nn.Sequential(nn.Linear(in_dim, out_dim, bias=False), bn, nn.ReLU(inplace=True))


class ProjectionHead(nn.Module):
    """``num_layers`` layers; the hidden width defaults to the encoder's feature width (2048·w for R50)."""

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 128, num_layers: int = 3) -> None:
        super().__init__()
        hidden_dim = in_dim if hidden_dim is None else hidden_dim
        sizes = {"in_dim": in_dim, "hidden_dim": hidden_dim, "out_dim": out_dim, "num_layers": num_layers}
        for name, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise SimCLRv2Error(f"projection head {name} must be an integer >= 1, got {value!r}")
        self.in_dim = in_dim
        self.hidden_dim = hidden_dim
        self.out_dim = out_dim
        self.num_layers = num_layers
        widths = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(
            _head_layer(widths[i], widths[i + 1], last=i == num_layers - 1) for i in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) → (B, out_dim) projections, not normalised (the loss normalises)."""
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_layers(self, x: Tensor) -> list[Tensor]:
        """[x, h1, …, hk]: entry j is the output after head layer j (entry 0 is the input)."""
        outputs = [x]
        for layer in self.layers:
            outputs.append(layer(outputs[-1]))
        return outputs

    def _check_layer(self, j: int) -> None:
        if not isinstance(j, int) or not 0 <= j <= self.num_layers:
            raise SimCLRv2Error(
                f"head layer {j!r} does not exist: choose 0 (encoder output) to {self.num_layers} "
                f"(this head has {self.num_layers} layers)"
            )

    def truncated(self, j: int) -> nn.Sequential:
        """Head layers 1…j as a Sequential of the same modules (pretrained weights are shared, not copied)."""
        self._check_layer(j)
        return nn.Sequential(*self.layers[:j])

    def output_dim(self, j: int) -> int:
        """Width of the output after head layer j (j = 0: the input width)."""
        self._check_layer(j)
        if j == 0:
            return self.in_dim
        return self.out_dim if j == self.num_layers else self.hidden_dim
