import pytest

from simclrv2.config import Config, build_config, load_config, option_defaults, to_toml
from simclrv2.errors import SimCLRv2Error


def test_defaults_follow_the_spec_for_small_images():
    config = Config()
    assert config.pretrain.temperature == 0.5
    assert config.pretrain.optimizer.name == "lars" and config.pretrain.optimizer.lr_scaling == "sqrt"
    assert config.pretrain.optimizer.weight_decay == 1e-4
    assert config.model.head_layers == 3
    assert config.augment.jitter_strength == 0.5


def test_toml_file_then_overrides_take_precedence(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[pretrain]\nepochs = 7\nbatch_size = 64\n[model]\ndepth = 50\n')
    config = load_config(path, {"pretrain.epochs": "3", "augment.crop_scale": "0.2,1.0", "run.progress": "false"})
    assert config.pretrain.epochs == 3
    assert config.pretrain.batch_size == 64
    assert config.model.depth == 50
    assert config.augment.crop_scale == (0.2, 1.0)
    assert config.run.progress is False


def test_resolved_config_round_trips_through_toml(tmp_path):
    config = load_config(None, {"pretrain.epochs": "3", "data.dataset": "cifar10", "augment.crop_scale": "0.2,1"})
    path = tmp_path / "resolved.toml"
    path.write_text(to_toml(config))
    assert load_config(path) == config


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(SimCLRv2Error, match="unknown option pretrain.epoch;.*epochs"):
        build_config({"pretrain": {"epoch": 3}})


def test_unknown_section_lists_the_valid_ones():
    with pytest.raises(SimCLRv2Error, match="unknown config section \\[trian\\].*pretrain"):
        build_config({"trian": {}})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pretrain.epochs": "zero"}, "pretrain.epochs = 'zero' is not a valid int"),
        ({"pretrain.epochs": "0"}, "pretrain.epochs must be >= 1"),
        ({"pretrain.temperature": "-1"}, "temperature must be > 0"),
        ({"pretrain.optimizer.lr_scaling": "cubic"}, "lr_scaling = 'cubic' is not one of: sqrt, linear, none"),
        ({"finetune.optimizer.name": "adam"}, r"\[finetune.optimizer\]: optimizer.name = 'adam' is not one of"),
        ({"finetune.epochs": "0", "finetune.min_steps": "0"}, "set epochs or min_steps"),
        ({"pipeline.head_layers": "0,x"}, "pipeline.head_layers = 'x' is not a valid int"),
        ({"run.precision": "fp16"}, "run.precision"),
        ({"model.stem": "big"}, "model.stem"),
        ({"run.progress": "maybe"}, "not a valid bool"),
        ({"augment.crop_scale": "0.5"}, "augment.crop_scale"),
    ],
)
def test_bad_values_give_one_clear_error(overrides, message):
    with pytest.raises(SimCLRv2Error, match=message):
        load_config(None, overrides)


def test_missing_or_invalid_config_file(tmp_path):
    with pytest.raises(SimCLRv2Error, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[pretrain\nepochs=")
    with pytest.raises(SimCLRv2Error, match="not valid TOML"):
        load_config(bad)


def test_option_defaults_list_every_field():
    options = option_defaults()
    assert options["pretrain.epochs"] == Config().pretrain.epochs
    assert "augment.blur_prob" in options and "run.seed" in options and "model.sk_ratio" in options


def test_stem_auto_picks_cifar_stem_for_small_images():
    model = Config().model
    assert model.cifar_stem(28) and model.cifar_stem(32) and not model.cifar_stem(96)


def test_a_nested_optimizer_table_keeps_its_stages_own_defaults():
    config = load_config(None, {"finetune.optimizer.base_lr": "0.5"})
    assert config.finetune.optimizer.base_lr == 0.5
    assert config.finetune.optimizer.name == Config().finetune.optimizer.name  # not the generic default
    assert config.pretrain.optimizer == Config().pretrain.optimizer


def test_lists_are_toml_arrays_and_round_trip(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[pipeline]\nlabel_fractions = ["1%", "10/class"]\nhead_layers = [0, 2]\n'
                    '[finetune.optimizer]\nname = "sgd"\n')
    config = load_config(path)
    assert config.pipeline.label_fractions == ("1%", "10/class") and config.pipeline.head_layers == (0, 2)
    assert config.finetune.optimizer.name == "sgd"
    assert "[finetune.optimizer]" in to_toml(config)
    again = tmp_path / "again.toml"
    again.write_text(to_toml(config))
    assert load_config(again) == config
