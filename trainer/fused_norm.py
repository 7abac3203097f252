"""Batch normalization through TensorFlow's fused kernel instead of Keras 3's chain of small ops.

Keras 3 normalizes with `ops.moments` and `tf.nn.batch_normalization`: two reductions and a handful of elementwise ops
over the whole activation in a training step, each a pass over memory, and as many again in the gradient; two passes
in inference. `FusedBatchNormV3` does the statistics and the normalization in one kernel (its gradient in another).
On 2 CPU cores that took resnet_lite's training step at 160 from about 750 to 540 CPU ms
(benchmarks/train_step_precision.py --norm) and its export's inference from about 3.3 to 3.0 CPU ms per photo
(benchmarks.score_bench.model_only_rate); docs/TRAINING.md "Cheaper steps".

The fused kernel is taken only where it computes exactly what Keras does: a 4-D channels-last input, no mask, not
synchronized across replicas, no renorm; anything else is Keras' own code. The variables (gamma, beta, moving mean
and variance) are Keras', so weights files load either way.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="catsdogs")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization through the fused kernel, in training and inference (module docstring)."""

    def _fusable(self, inputs, mask) -> bool:
        return (keras.backend.backend() == "tensorflow" and mask is None and not self.synchronized
                and not self.renorm and len(inputs.shape) == 4 and self.axis in (3, -1))

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        if not (training and self.trainable):  # the moving statistics, as Keras uses them in inference
            outputs = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon, data_format="NHWC",
                is_training=False)[0]
            return tf.cast(outputs, self.compute_dtype)
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        # The kernel returns the unbiased variance (n - 1); Keras keeps the biased one (n) in its moving average.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), tf.float32)
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        momentum = self.momentum
        self.moving_mean.assign(tf.cast(self.moving_mean, tf.float32) * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(tf.cast(self.moving_variance, tf.float32) * momentum + variance * (1.0 - momentum))
        return tf.cast(outputs, self.compute_dtype)
