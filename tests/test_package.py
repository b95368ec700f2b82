"""What ``import simclrv2`` promises: its version, its error type, and the README's building blocks doing what the
README's comments say they do."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import simclrv2

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).parents[1]


def test_the_version_is_the_one_the_project_declares():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert simclrv2.__version__ == declared


def test_every_exported_name_exists_and_bad_input_raises_the_exported_error():
    missing = [name for name in simclrv2.__all__ if not hasattr(simclrv2, name)]
    assert not missing
    with pytest.raises(simclrv2.SimCLRv2Error, match="unknown option pretrain.epoch; valid options"):
        simclrv2.load_config(None, {"pretrain.epoch": "3"})
    with pytest.raises(simclrv2.SimCLRv2Error, match="temperature"):
        simclrv2.nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0)


def test_the_readmes_building_blocks_do_what_its_comments_say():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("The building blocks:", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    z1, z2 = torch.randn(6, 16, generator=torch.Generator().manual_seed(0)).chunk(2)
    model = simclrv2.resnet(18, width_multiplier=0.125, cifar_stem=True)
    namespace = {"z1": z1, "z2": z2, "model": model}
    exec(block, namespace)

    assert namespace["encoder"].feature_dim == 2048  # "encoder.feature_dim == 2048"

    # "mean over the 2N anchors": cross-entropy of each view against its partner, the anchor itself left out
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T / 0.5).fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(3, 6), torch.arange(0, 3)])
    torch.testing.assert_close(namespace["loss"], F.cross_entropy(logits, partner))

    # "BN and biases excluded": from weight decay and the trust ratio, and nothing else is
    adapted, excluded = namespace["optimizer"].param_groups
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    norm_or_bias = {id(p) for m in norms for p in m.parameters()}
    norm_or_bias |= {id(p) for name, p in model.named_parameters() if name.endswith("bias")}
    assert {id(p) for p in excluded["params"]} == norm_or_bias and excluded["lars_exclude"]
    assert excluded["weight_decay"] == 0 and adapted["weight_decay"] == 1e-4 and not adapted["lars_exclude"]
    assert len(adapted["params"]) + len(excluded["params"]) == len(list(model.parameters()))
