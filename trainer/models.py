"""The model zoo, by name. Every model takes float pixels in [0, 255] of shape [batch, h, w, 3], scales them itself,
and returns the float32 probability of class_names[1] (dog) with shape [batch, 1].

- `seed_cnn`: the original recipe, kept as the baseline: pixels / 255, Conv 32/64/128 (3x3, ReLU) each followed by
  2x2 max-pooling, Flatten, Dense 128, sigmoid; trained with Adam and binary cross-entropy.
- `resnet_lite` (default): a compact residual network (a stride-2 stem, then stages of basic 3x3 blocks with batch
  norm, each stage halving the resolution and doubling the width; depth 1, one block per stage, by default; depth 2 is
  ResNet-18's layout at half its width; its batch norm runs TensorFlow's fused kernel, trainer/fused_norm.py),
  built from scratch, working at 160x160 by default (trained from 96x96 up:
  progressive resizing); input size, width, depth, stages and dropout are configurable (trainer/config.py).
- keras.applications backbones (`efficientnet_b0`, `mobilenet_v3_small`, `resnet50_v2`): built with weights=None and
  loaded from a local or gs:// file (`--weights`), so nothing is downloaded at run time; a new sigmoid head.
  Fine-tuning (trainer/train.py): the head alone first (`--freeze_backbone_epochs`), then the whole network at a
  lower rate, with the pretrained backbone's BatchNormalization layers kept in inference mode throughout.
"""

import os
import shutil
import tempfile

from trainer import config as config_lib
from trainer import storage

# Keras' default 0.99 needs ~500 steps before the moving statistics used at evaluation settle; 0.9 needs ~50, which
# keeps short runs (tests, --time_budget_minutes comparisons) honest and costs nothing on long ones.
BN_MOMENTUM = 0.9
BACKBONE_NAME = "backbone"  # the keras.applications feature extractor inside an application model


def build_model(cfg: config_lib.TrainConfig, input_size, any_size: bool = False):
    """The named model for images of input_size (h, w), the dataset's. Build it inside strategy.scope().

    any_size (resnet_lite, the training model of progressive resizing): the network alone, taking pre-resized
    images of any side; the model that is evaluated and served is built without it and given its weights.

    When the network works at another size (cfg.model_input_size), the model starts with a Resizing layer
    (bilinear, antialiased, like the export's decoder) and takes images of any size: the trainer feeds it
    pre-resized images, serving feeds it the dataset's size, and both go through the same resize.
    """
    height, width = (int(v) for v in input_size)
    network_size = tuple(cfg.model_input_size((height, width)))
    if cfg.model == config_lib.SEED_CNN:
        network = seed_cnn(network_size)
    elif cfg.model == config_lib.RESNET_LITE:
        network = resnet_lite((None, None) if any_size else network_size, width=cfg.width, depth=cfg.depth,
                              stages=cfg.stages, dropout=cfg.dropout)
        if any_size:
            return network
    else:
        network = application(cfg.model, network_size, weights=cfg.weights, dropout=cfg.dropout)
    if network_size == (height, width):
        return network
    return resizing(network, network_size)


def resizing(network, size):
    """network behind a bilinear antialiased Resizing to size, taking images of any size."""
    import keras

    inputs = keras.Input((None, None, 3), name="pixels")
    resized = keras.layers.Resizing(*size, interpolation="bilinear", antialias=True, name="resize")(inputs)
    return keras.Model(inputs, network(resized), name=network.name)


def seed_cnn(input_size):
    import keras

    layers = keras.layers
    inputs = keras.Input((*input_size, 3), name="pixels")
    x = layers.Rescaling(1 / 255.0, name="scale")(inputs)
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, activation="relu", name=f"conv{filters}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{filters}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="dense128")(x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(x)
    return keras.Model(inputs, outputs, name=config_lib.SEED_CNN)


def _residual_block(x, filters: int, stride: int, name: str):
    import keras

    from trainer.fused_norm import FusedBatchNormalization as BatchNorm

    layers = keras.layers
    shortcut = x
    # Plain 3x3 convolutions: on CPU (oneDNN) they run ~2x more images/s than depthwise-separable ones of the
    # same width, measured, although they cost more FLOPs.
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = BatchNorm(momentum=BN_MOMENTUM, name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    # gamma 0: each block starts as the identity, which keeps deep stacks trainable from the first step
    y = BatchNorm(momentum=BN_MOMENTUM, gamma_initializer="zeros", name=f"{name}_bn2")(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(shortcut)
        shortcut = BatchNorm(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


def resnet_lite(input_size, width: int = 32, depth: int = 2, stages: int = 4, dropout: float = 0.2):
    import keras

    from trainer.fused_norm import FusedBatchNormalization as BatchNorm

    layers = keras.layers
    inputs = keras.Input((*input_size, 3), name="pixels")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = BatchNorm(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage in range(stages):
        filters = width * 2**stage
        for block in range(depth):
            stride = 2 if block == 0 else 1  # every stage halves the resolution: 128 -> 64 (stem) -> 32 ... 4
            x = _residual_block(x, filters, stride, name=f"stage{stage}_block{block}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(x)
    return keras.Model(inputs, outputs, name=config_lib.RESNET_LITE)


def local_copy(path: str) -> tuple[str, str | None]:
    """A local file with the same content as path (copied from gs:// when needed) and a temp dir to remove."""
    if not storage.is_remote(path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--weights {path} does not exist")
        return path, None
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"--weights {path} does not exist")
    folder = tempfile.mkdtemp(prefix="catsdogs-weights-")
    local = os.path.join(folder, os.path.basename(path))  # keep the name: Keras picks the format by its suffix
    tf.io.gfile.copy(path, local)
    return local, folder


def backbone(name: str, input_size):
    """The keras.applications feature extractor for name, randomly initialised (weights=None), global-avg pooled."""
    import keras

    constructor, _ = config_lib.APPLICATIONS[name]
    kwargs = {"include_top": False, "weights": None, "input_shape": (*input_size, 3), "pooling": "avg",
              "name": BACKBONE_NAME}
    if name == "mobilenet_v3_small":
        kwargs["include_preprocessing"] = True
    return getattr(keras.applications, constructor)(**kwargs)


def application(name: str, input_size, weights: str | None = None, dropout: float = 0.2):
    import keras

    _, scaling = config_lib.APPLICATIONS[name]
    features = backbone(name, input_size)
    if weights:
        local, temporary = local_copy(weights)
        try:
            features.load_weights(local)
        except ValueError as error:
            raise ValueError(f"--weights {weights} does not fit {name} without its top (include_top=False): {error}. "
                             f"Use the matching *_notop.h5 file.") from None
        finally:
            if temporary:
                shutil.rmtree(temporary, ignore_errors=True)
    inputs = keras.Input((*input_size, 3), name="pixels")
    x = inputs if scaling == "raw" else keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    x = features(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(x)
    return keras.Model(inputs, outputs, name=name)


def _sublayers(layer):
    for child in getattr(layer, "layers", []):
        yield child
        yield from _sublayers(child)


def find_backbone(model):
    """The keras.applications feature extractor inside model (also behind a Resizing wrapper), or None."""
    return next((layer for layer in _sublayers(model) if layer.name == BACKBONE_NAME), None)


def set_backbone_trainable(backbone, trainable: bool, freeze_batch_norm: bool) -> None:
    """Freezes or unfreezes the backbone. With freeze_batch_norm (pretrained weights), its BatchNormalization layers
    stay frozen either way: in inference mode they keep the ImageNet statistics, which small fine-tuning batches
    would otherwise wreck (the usual Keras fine-tuning practice)."""
    import keras

    backbone.trainable = trainable
    if freeze_batch_norm:
        for layer in _sublayers(backbone):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def uses_plain_adam(cfg: config_lib.TrainConfig) -> bool:
    """The seed recipe is plain Adam; the other models use AdamW unless --weight_decay 0."""
    return cfg.model == config_lib.SEED_CNN or cfg.weight_decay == 0
