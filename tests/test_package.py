import simclrv2


def test_package_exposes_its_error_type_and_version():
    assert issubclass(simclrv2.SimCLRv2Error, Exception)
    assert simclrv2.__version__.count(".") == 2
