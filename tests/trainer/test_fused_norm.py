"""trainer/fused_norm.py: the fused kernel computes what Keras' BatchNormalization computes, and is taken."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from trainer import config, models  # noqa: E402
from trainer.fused_norm import FusedBatchNormalization  # noqa: E402


def twin_layers(x, **options):
    """A Keras BatchNormalization and a fused one, built for x, with the same (non-trivial) variables."""
    rng = np.random.default_rng(1)
    plain, fused = keras.layers.BatchNormalization(momentum=0.9, **options), FusedBatchNormalization(momentum=0.9,
                                                                                                    **options)
    plain.build(x.shape)
    fused.build(x.shape)
    for a, b in zip(plain.weights, fused.weights, strict=True):
        value = a.numpy() + rng.normal(0, 0.3, a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    return plain, fused


@pytest.mark.parametrize("options", [{}, {"gamma_initializer": "zeros"}, {"center": False, "scale": False}])
def test_a_training_step_matches_keras_outputs_gradients_and_moving_statistics(options):
    x = tf.constant(np.random.default_rng(0).normal(2, 3, (8, 6, 5, 4)).astype("float32"))
    plain, fused = twin_layers(x, **options)
    weights = tf.range(1, 5, dtype=tf.float32)
    for _ in range(2):  # two steps: the moving averages compound
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            expected, got = plain(x, training=True), fused(x, training=True)
            loss_plain, loss_fused = tf.reduce_sum(expected * weights), tf.reduce_sum(got * weights)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        np.testing.assert_allclose(tape.gradient(loss_fused, x), tape.gradient(loss_plain, x), atol=1e-5)
        for a, b in zip(tape.gradient(loss_plain, plain.trainable_weights),
                        tape.gradient(loss_fused, fused.trainable_weights), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-3)
    for a, b in zip(plain.non_trainable_weights, fused.non_trainable_weights, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fused(x, training=False), plain(x, training=False), atol=1e-5)


def test_bfloat16_inputs_keep_their_dtype_and_the_moving_statistics_stay_float32():
    x = tf.cast(np.random.default_rng(0).normal(2, 3, (8, 6, 5, 4)), tf.bfloat16)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        plain_bf, fused_bf = keras.layers.BatchNormalization(momentum=0.9), FusedBatchNormalization(momentum=0.9)
        expected, got = plain_bf(x, training=True), fused_bf(x, training=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert got.dtype == expected.dtype == tf.bfloat16
    assert fused_bf.moving_variance.dtype == "float32"
    np.testing.assert_allclose(tf.cast(got, tf.float32), tf.cast(expected, tf.float32), atol=0.05)
    np.testing.assert_allclose(fused_bf.moving_variance.numpy(), plain_bf.moving_variance.numpy(), rtol=1e-2)


def test_resnet_lite_trains_and_infers_through_the_fused_kernel():
    model = models.build_model(config.TrainConfig(data_dir="d", model_dir="m", width=8, stages=2), (32, 32))
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(isinstance(layer, FusedBatchNormalization) for layer in norms)
    images = tf.zeros((2, 32, 32, 3))

    def op_types(training):
        graph = tf.function(lambda batch: model(batch, training=training)).get_concrete_function(images).graph
        return {op.type for op in graph.get_operations()}

    for training in (True, False):
        kinds = op_types(training)
        assert any(kind.startswith("FusedBatchNorm") for kind in kinds)
        assert "Rsqrt" not in kinds  # tf.nn.batch_normalization's, Keras' own path
