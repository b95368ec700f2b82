import sys
from pathlib import Path

import pytest

from simclrv2.cli import main
from simclrv2.config import load_config, to_toml
from simclrv2.config.shipped import SHIPPED_DIR, resolve_config, shipped_configs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def test_config_show_prints_the_resolved_config_with_overrides(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("[pretrain]\nepochs = 7\n")
    assert main(["config", "show", "--config", str(config), "--finetune.labels", "10/class"]) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert shown["pretrain"]["epochs"] == 7 and shown["finetune"]["labels"] == "10/class"
    assert shown["pretrain"]["batch_size"] == 512  # a default, resolved
    expected = load_config(config, {"finetune.labels": "10/class"})
    assert load_config(_write(tmp_path / "shown.toml", to_toml(expected)), None) == expected


def _write(path, text):
    path.write_text(text)
    return path


def test_abbreviated_option_names_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--pretrain.epoch", "3"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --pretrain.epoch" in capsys.readouterr().err


def test_abbreviations_are_refused_by_the_inference_commands_too(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--checkpoint", "run", "images", "--top", "3"])
    assert "unrecognized arguments: --top" in capsys.readouterr().err


def test_the_shipped_configs_live_in_the_package_and_load():
    assert {"demo", "fashion_mnist_cpu", "fashion_mnist_gpu", "cifar10_gpu"} <= set(shipped_configs())
    for name in shipped_configs():
        load_config(SHIPPED_DIR / f"{name}.toml")


def test_a_bare_name_finds_a_shipped_config_and_a_file_wins_over_it(tmp_path, monkeypatch, capsys):
    assert resolve_config("demo") == SHIPPED_DIR / "demo.toml"
    assert main(["config", "show", "--config", "demo"]) == 0
    shipped = load_config(SHIPPED_DIR / "demo.toml").pretrain.epochs
    assert shipped != 9 and tomllib.loads(capsys.readouterr().out)["pretrain"]["epochs"] == shipped
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text("[pretrain]\nepochs = 9\n")
    assert resolve_config("demo") == Path("demo")  # the file in the working folder


def test_an_unknown_config_name_lists_the_shipped_ones(capsys):
    assert main(["config", "show", "--config", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "config file nosuch not found" in err and "demo" in err and err.count("\n") == 1


def test_help_explains_label_subsets_and_what_epochs_0_means(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "N/class" in out and "60/class" in out
    # the default is 60 epochs, raised to min_steps; 0 is not "automatic 60/30" but the step minimum alone
    assert "automatic" not in out and "epochs = 0 means only that minimum" in out
    default = load_config().finetune.epochs
    assert f"--finetune.epochs INT raised to as many epochs as finetune.min_steps needs; 0: only that minimum " \
           f"(default: {default})" in out


def test_evaluate_help_names_both_splits_it_reports(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("evaluate"))
    assert "validation and test" in line


def test_the_python_api_loads_a_shipped_config_by_name_too():
    assert load_config("demo", {"run.seed": "3"}) == load_config(SHIPPED_DIR / "demo.toml", {"run.seed": "3"})
    with pytest.raises(Exception, match="name of a shipped config: .*demo"):
        load_config("nosuch")
