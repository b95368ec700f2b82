import simclrv2


def test_package_exposes_its_error_type_and_version():
    assert issubclass(simclrv2.SimCLRv2Error, Exception)
    assert simclrv2.__version__.count(".") == 2


def test_public_api_documented_in_the_readme():
    import torch

    encoder = simclrv2.resnet(18, width_multiplier=0.25, cifar_stem=True, in_channels=1)
    assert encoder.feature_dim == 128
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    assert simclrv2.nt_xent_loss(z1, z2, temperature=0.5).ndim == 0
    optimizer = simclrv2.LARS(simclrv2.param_groups(encoder, 1e-4), lr=0.1)
    assert len(optimizer.param_groups) == 2
