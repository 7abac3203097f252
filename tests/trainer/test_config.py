import dataclasses
import json

import pytest

from trainer import config


def test_defaults_are_valid_and_flags_map_onto_fields():
    cfg = config.parse_args(["--data_dir", "gs://b/data", "--model_dir", "/tmp/m", "--model", "seed_cnn",
                             "--epochs", "3", "--batch_size", "8", "--learning_rate", "0.002", "--augment", "false",
                             "--time_budget_minutes", "1.5", "--steps_per_epoch", "none", "--mixed_precision", "off"])
    assert cfg == config.TrainConfig(data_dir="gs://b/data", model_dir="/tmp/m", model="seed_cnn", epochs=3,
                                     batch_size=8, learning_rate=0.002, augment=False, time_budget_minutes=1.5,
                                     mixed_precision="off")
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()  # what config.json stores
    with pytest.raises(AttributeError):
        cfg.epochs = 5  # frozen


@pytest.mark.parametrize(("changes", "message"), [
    ({"model": "vgg99"}, "--model 'vgg99' is unknown"),
    ({"epochs": 0}, "--epochs must be an integer >= 1"),
    ({"batch_size": 0}, "--batch_size"),
    ({"learning_rate": 0.0}, "--learning_rate"),
    ({"warmup_epochs": 61}, "--warmup_epochs must be between 0 and --epochs (60)"),
    ({"warmup_epochs": -1}, "--warmup_epochs must be between 0 and --epochs"),
    ({"lr_decay": "step"}, "--lr_decay must be one of cosine, linear (got 'step')"),
    ({"lr_decay": "linear", "model": "efficientnet_b0", "weights": "w.h5"}, "--lr_decay linear does not apply to "
                                                                            "fine-tuning a backbone"),
    ({"mixed_precision": "yes"}, "--mixed_precision must be one of auto, on, off"),
    ({"cutmix_alpha": -1}, "--cutmix_alpha must be in [0, 10] (got -1)"),
    ({"cutmix_alpha": 1.0, "mixup_alpha": 0.2}, "--mixup_alpha and --cutmix_alpha both mix the training batches: "
                                                "choose one"),
    ({"weights": "w.h5"}, "--weights only applies to keras.applications backbones"),
    ({"time_budget_minutes": 0}, "--time_budget_minutes must be > 0"),
    ({"steps_per_epoch": 0}, "--steps_per_epoch"),
    ({"dropout": 1.0}, "--dropout"),
    ({"augment_strength": 2.5}, "--augment_strength must be in [0, 2] (got 2.5)"),
    ({"augment_strength": -0.1}, "--augment_strength must be in [0, 2]"),
    ({"width": 2}, "--width"),
    ({"cache": "disk"}, "--cache"),
    ({"data_dir": ""}, "--data_dir is required"),
    ({"progressive_resize_from": 160}, "--progressive_resize_from must be an integer from 16 to below the network "
                                       "side --input_size (160)"),
    ({"progressive_resize_from": 64, "input_size": 64}, "--input_size (64)"),
    ({"progressive_resize_from": 96, "model": "seed_cnn"}, "--progressive_resize_from needs resnet_lite"),
])
def test_bad_values_fail_at_construction_saying_what_to_do(changes, message):
    arguments = {"data_dir": "d", "model_dir": "m"} | changes
    with pytest.raises(ValueError, match="invalid training config") as error:
        config.TrainConfig(**arguments)
    assert message in str(error.value)


@pytest.mark.parametrize(("changes", "image_size", "start"), [
    ({}, [180, 180], 96),  # the default: resnet_lite from 96 up to 160
    ({"progressive_resize_from": 0}, [180, 180], None),  # 0: one side
    ({"model": "seed_cnn"}, [180, 180], None),  # only resnet_lite trains at several sides
    ({}, [64, 64], None),  # the network side is capped at the dataset's 64: nothing to grow from
    ({"input_size": 32, "progressive_resize_from": 16}, [64, 64], 16),
    ({"progressive_resize_from": 112}, [100, 100], None),  # an explicit start at or above the capped side: one side
])
def test_progressive_start_side(changes, image_size, start):
    assert config.TrainConfig(data_dir="d", model_dir="m", **changes).start_side(image_size) == start


def test_weights_are_accepted_for_backbones():
    assert config.TrainConfig(data_dir="d", model_dir="m", model="efficientnet_b0", weights="gs://b/w.h5").weights


def test_cli_reports_every_problem_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        config.parse_args(["--data_dir", "d", "--model_dir", "m", "--epochs", "0", "--model", "nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--epochs must be an integer >= 1" in err and "--model 'nope' is unknown" in err


@pytest.mark.parametrize("argv, hint", [
    (["--epoch", "1"], "did you mean --epochs?"),  # an abbreviation is refused, not taken for --epochs
    (["--learning_rat", "0.1"], "did you mean --learning_rate?"),
    (["--batchsize=8"], "did you mean --batch_size?"),
    (["--colour", "red"], "see catsdogs-train --help"),
])
def test_unknown_and_abbreviated_flags_exit_2_with_a_suggestion(argv, hint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        config.parse_args(["--data_dir", "d", "--model_dir", "m", *argv])
    assert exit_info.value.code == config.EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert f"unrecognized argument {argv[0]!r}" in err and hint in err


def test_help_lists_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        config.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for field in dataclasses.fields(config.TrainConfig):
        assert f"--{field.name}" in text
    assert "--epochs INT maximum epochs" in text and "(default: 60)" in text
    assert "--augment [{true,false}]" in text and "(default: true)" in text
    budget_help = text.split("--time_budget_minutes FLOAT minutes of training")[1].split(" --steps_per_epoch")[0]
    assert budget_help.endswith("(default: none)")
    assert "--data_dir TEXT" in text and "(required)" in text
