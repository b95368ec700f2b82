import subprocess
import sys

import pytest

from simclrv2.cli import main
from simclrv2.config import option_defaults


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in option_defaults():
        assert f"--{option}" in out
    assert "(default: 100)" in out  # pretrain.epochs


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pretrain", "--model.depth", "42"], "18, 34, 50, 101, 152"),
        (["pretrain", "--pretrain.temperature", "0"], "temperature must be > 0"),
        (["pretrain", "--config", "missing.toml"], "config file missing.toml not found"),
        (["finetune"], "finetune.pretrained"),
        (["evaluate"], "evaluate.checkpoint"),
        (["distill"], "distill.teacher"),
        (["pretrain", "--resume", "--overwrite"], "exclude each other"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, capsys, tiny_fashion, argv, message):
    code = main([*argv, "--run-dir", str(tmp_path / "run"), "--data.data_dir", str(tiny_fashion)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unknown_config_key_in_a_file_lists_valid_keys(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("[pretrain]\nepoch = 3\n")
    assert main(["pretrain", "--config", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    assert "valid options in [pretrain]" in capsys.readouterr().err


def test_missing_data_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SIMCLRV2_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code = main(["pretrain", "--data.dataset", "cifar10", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "simclrv2 download cifar10" in err


def test_console_script_runs_a_tiny_pretraining(tmp_path, tiny_fashion):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "simclrv2.cli", "pretrain", "--run-dir", str(run_dir),
           "--data.data_dir", str(tiny_fashion), "--model.width_multiplier", "0.125", "--pretrain.epochs", "1",
           "--pretrain.batch_size", "100", "--run.knn_k", "10", "--run.progress", "false"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "kNN top-1" in done.stdout
    assert (run_dir / "checkpoints" / "final.pt").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--resume" in again.stderr
