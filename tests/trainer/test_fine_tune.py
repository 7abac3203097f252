"""The transfer-learning path, wired end to end on "ImageNet" weights that are random weights saved to a file: the
head trains alone first, then the whole network at a lower rate, the pretrained BatchNormalization statistics kept."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.trainer.datasets import write_dataset
from tests.trainer.test_train import NO_GATE
from trainer import config as config_lib
from trainer import fine_tune, models, schedules, train

pytestmark = pytest.mark.slow

BACKBONE = "mobilenet_v3_small"
SIZE = 32


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    keras.utils.set_random_seed(7)
    path = tmp_path_factory.mktemp("weights") / f"{BACKBONE}_notop.weights.h5"
    models.backbone(BACKBONE, (SIZE, SIZE)).save_weights(str(path))
    return path


def snapshot(backbone) -> dict:
    kinds = {}
    for layer in models._sublayers(backbone):
        for variable in layer.weights:
            kind = "batch_norm" if isinstance(layer, keras.layers.BatchNormalization) else "other"
            kinds[variable.path] = (kind, variable.numpy().copy())
    return kinds


def changed(before: dict, after: dict, kind: str) -> int:
    return sum(not np.array_equal(value, after[path][1]) for path, (k, value) in before.items() if k == kind)


def test_head_first_then_the_whole_network_with_batch_norm_statistics_kept(weights_file):
    cfg = config_lib.TrainConfig(data_dir="unused", model_dir="unused", model=BACKBONE, weights=str(weights_file),
                                 epochs=3, freeze_backbone_epochs=1, learning_rate=0.01, warmup_epochs=0)
    assert cfg.head_only_epochs() == 1
    model = models.build_model(cfg, (SIZE, SIZE))
    steps = 4
    schedule = schedules.FineTuneSchedule(0.01, 0, steps, 3 * steps, cfg.fine_tune_factor)
    train.compile_model(model, cfg, schedule)
    freeze = fine_tune.prepare_fine_tuning(model, cfg, cfg.head_only_epochs())
    backbone = models.find_backbone(model)
    loaded = snapshot(backbone)
    head = model.get_layer("probability")
    head_before = head.kernel.numpy().copy()

    epochs = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: epochs.append((snapshot(backbone), head.kernel.numpy().copy())))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (16, SIZE, SIZE, 3)).astype("float32")
    labels = (np.arange(16) % 2).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4).repeat()
    model.fit(data, epochs=3, steps_per_epoch=steps, callbacks=[freeze, record], shuffle=False, verbose=0)

    (after_head, head_after_1), (after_all, _), _ = epochs
    assert not np.array_equal(head_before, head_after_1)  # epoch 1: the head learns ...
    assert changed(loaded, after_head, "other") == 0  # ... the backbone does not move
    assert changed(after_head, after_all, "other") > 0  # epoch 2: the backbone is fine-tuned
    assert changed(loaded, after_all, "batch_norm") == 0  # ImageNet statistics (and BN scales) kept throughout
    lr = [float(schedule(step)) for step in (0, steps - 1, steps, 2 * steps, 3 * steps)]
    assert lr[0] == lr[1] == pytest.approx(0.01)  # head alone at the peak (no warm-up asked for)
    assert lr[2] == pytest.approx(0.001) and lr[3] == pytest.approx(0.0005) and lr[4] == pytest.approx(0, abs=1e-9)


def test_the_trainer_fine_tunes_a_backbone_from_a_weights_file(weights_file, tmp_path, capsys):
    dataset = write_dataset(tmp_path / "data", size=SIZE, per_class={"train": 16, "validation": 4, "test": 4},
                            num_shards=1)
    model_dir = tmp_path / "model"
    assert train.main(["--data_dir", str(dataset), "--model_dir", str(model_dir), "--model", BACKBONE,
                       "--weights", str(weights_file), "--epochs", "3", "--batch_size", "8",
                       "--learning_rate", "0.001", *NO_GATE]) == 0
    out = capsys.readouterr().err
    assert "epoch 3: backbone trainable" in out  # the default with --weights: two head-only epochs
    resolved = json.loads((model_dir / "config.json").read_text())
    assert resolved["head_only_epochs"] == 2
    assert (model_dir / "metrics.json").exists() and (model_dir / "export" / "latest").exists()
