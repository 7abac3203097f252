"""seed_cnn training images/s under MirroredStrategy over N logical CPUs (1: the default strategy), printed as JSON.

    python -m benchmarks.strategy_rate DEVICES STEPS

A process of its own because logical devices must be configured before TensorFlow starts.
"""

import json
import sys
import time


def main(devices: int, steps: int) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    if devices > 1:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    from benchmarks.train_bench import build
    from trainer import train

    strategy = tf.distribute.MirroredStrategy() if devices > 1 else tf.distribute.get_strategy()
    with strategy.scope():
        cfg, model = build("seed_cnn")
        train.compile_model(model, cfg, 1e-3)
    images = tf.random.uniform((64, 180, 180, 3), 0, 255)  # global batch 64: 32 per logical device under Mirrored
    dataset = tf.data.Dataset.from_tensors((images, tf.cast(tf.range(64) % 2, tf.float32))).repeat()
    model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    print(json.dumps(steps * 64 / (time.perf_counter() - start)))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
