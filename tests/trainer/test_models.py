import numpy as np
import pytest

from trainer import config, models

keras = pytest.importorskip("keras")


def cfg(**changes):
    return config.TrainConfig(data_dir="d", model_dir="m", **changes)


def test_seed_cnn_matches_the_original_recipe():
    model = models.build_model(cfg(model="seed_cnn"), (180, 180))
    kinds = [(type(layer).__name__, getattr(layer, "filters", getattr(layer, "units", None)))
             for layer in model.layers]
    assert kinds == [
        ("InputLayer", None), ("Rescaling", None),
        ("Conv2D", 32), ("MaxPooling2D", None), ("Conv2D", 64), ("MaxPooling2D", None),
        ("Conv2D", 128), ("MaxPooling2D", None), ("Flatten", None), ("Dense", 128), ("Dense", 1),
    ]
    assert model.get_layer("scale").scale == pytest.approx(1 / 255)
    assert all(model.get_layer(f"pool{f}").pool_size == (2, 2) for f in (32, 64, 128))
    assert model.layers[-1].activation.__name__ == "sigmoid"
    assert models.uses_plain_adam(cfg(model="seed_cnn"))


def test_resnet_lite_width_depth_and_dropout_are_configurable():
    small = models.build_model(cfg(width=8, depth=1, stages=2, dropout=0.1), (32, 32))
    large = models.build_model(cfg(width=16, depth=2, stages=3, dropout=0.4), (32, 32))
    assert small.count_params() < large.count_params()
    assert large.get_layer("dropout").rate == 0.4
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in large.layers) > 0
    # stem + 2 per block + a projection where a stage changes resolution or width
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in large.layers) == 1 + 2 * 2 * 3 + 3
    out = small.predict(np.full((2, 32, 32, 3), 255.0, np.float32), verbose=0)
    assert out.shape == (2, 1) and np.all((out > 0) & (out < 1))


def test_network_input_size_resizes_inside_the_model():
    from trainer import data

    assert cfg().model_input_size((180, 180)) == [160, 160]  # resnet_lite's default working size
    assert cfg().model_input_size((64, 64)) == [64, 64]  # never upsampled
    assert cfg(model="seed_cnn").model_input_size((180, 180)) == [180, 180]  # the recipe works at the data's size
    with pytest.raises(ValueError, match="--input_size"):
        cfg(input_size=8)
    keras.utils.set_random_seed(1)
    model = models.build_model(cfg(width=8, stages=2, input_size=24), (48, 48))
    resize = model.get_layer("resize")
    assert (resize.height, resize.width, resize.antialias) == (24, 24, True)
    # serving feeds the dataset's size; the trainer feeds images it resized (and rounded) with data.resize
    images = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    pre_resized = data.resize(images, (24, 24)).numpy()
    assert pre_resized.shape == (2, 24, 24, 3) and pre_resized.dtype == np.uint8
    served = model.predict(images.astype(np.float32), verbose=0)
    trained_on = model.predict(pre_resized.astype(np.float32), verbose=0)
    np.testing.assert_allclose(served, trained_on, atol=0.01)  # only the trainer's 8-bit rounding differs
    assert not np.allclose(model.predict(images[:, :24, :24].astype(np.float32), verbose=0), served, atol=1e-4)


def test_backbone_weights_are_loaded_from_a_file(tmp_path):
    keras.utils.set_random_seed(7)
    source = models.backbone("mobilenet_v3_small", (32, 32))
    path = tmp_path / "mobilenet_v3_small_notop.weights.h5"
    source.save_weights(str(path))
    keras.utils.set_random_seed(8)  # a different random init, so only loading can make the weights equal
    model = models.build_model(cfg(model="mobilenet_v3_small", weights=str(path), width=8), (32, 32))
    loaded = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    assert len(loaded.weights) == len(source.weights) > 0
    for ours, theirs in zip(loaded.weights, source.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    unloaded = models.build_model(cfg(model="mobilenet_v3_small"), (32, 32))
    inner = next(layer for layer in unloaded.layers if isinstance(layer, keras.Model))
    assert any(not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(inner.weights, source.weights, strict=True))


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_missing_or_mismatched_weights_fail_with_a_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.build_model(cfg(model="mobilenet_v3_small", weights=str(tmp_path / "nope.h5")), (32, 32))
    other = models.seed_cnn((32, 32))
    path = tmp_path / "seed.weights.h5"
    other.save_weights(str(path))
    with pytest.raises(ValueError, match="does not fit mobilenet_v3_small"):
        models.build_model(cfg(model="mobilenet_v3_small", weights=str(path)), (32, 32))
