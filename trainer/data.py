"""The input pipeline: TFRecord shards (local or gs://) -> batches of (float32 pixels in [0, 255], float32 label).

One step per line, in order:
    list shards -> interleave parallel reads -> parse + decode JPEG -> [cache] -> [shuffle, repeat] -> batch
    -> [augment: flips, zoom/crop, small rotations, colour] -> [mixup or cutmix] -> prefetch

Corrupt records are never skipped: a bad TFRecord raises DataLossError and a bad JPEG InvalidArgumentError, so a
damaged dataset stops the run instead of silently shrinking it. Multi-worker sharding is by FILE when every worker
can get at least one shard, else by DATA (every worker reads everything and keeps its share).
"""

from trainer import dataset_contract, features


class DatasetMissing(FileNotFoundError):
    pass


def _locate(data_dir: str) -> tuple[str, dict]:
    import tensorflow as tf

    def read(path: str) -> bytes:
        with tf.io.gfile.GFile(path, "rb") as handle:
            return handle.read()

    try:
        return dataset_contract.locate(data_dir, read, tf.io.gfile.exists)
    except dataset_contract.DatasetError as error:
        raise DatasetMissing(str(error)) from None


def read_metadata(data_dir: str) -> dict:
    """The metadata.json of the version `latest` names (or of a version folder given directly), checked, with the
    version folder under `version_dir`."""
    version_dir, metadata = _locate(data_dir)
    features.validate_class_names(metadata["class_names"])
    return {**metadata, "version_dir": version_dir}


LINEAGE_KEYS = ("version", "version_dir", "written", "counts", "image_size", "class_names", "inputs", "options",
                "code_version", "finished_at")


def lineage(metadata: dict) -> dict:
    """What a model records of the dataset it was trained on (its model_info.json `training_data`)."""
    return {key: metadata[key] for key in LINEAGE_KEYS if key in metadata}


def shard_files(data_dir: str, split: str) -> list[str]:
    version_dir, metadata = _locate(data_dir)
    files = [path for path, _ in dataset_contract.split_shards(metadata, version_dir, split)]
    if not files:
        raise DatasetMissing(f"{data_dir} ({metadata['version']}) has no {split} shards. Run preprocessing first.")
    return files


def check_record_counts(data_dir: str, splits=features.SPLITS) -> None:
    """Counts every split's records and compares them with metadata.json, before any training: a shard that is
    missing, truncated or from another version stops the run here, naming the split and both counts."""
    import tensorflow as tf

    version_dir, metadata = _locate(data_dir)
    for split in splits:
        shards = dataset_contract.split_shards(metadata, version_dir, split)
        if not shards:
            continue
        files = [path for path, _ in shards]
        expected = sum(records for _, records in shards)
        counted = int(tf.data.TFRecordDataset(files, num_parallel_reads=min(8, len(files)))
                      .reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
        if counted != expected:
            raise DatasetMissing(f"{version_dir}: the {split} split holds {counted} records but metadata.json lists "
                                 f"{expected}; the dataset is damaged or incomplete: preprocess again")


def corrupt_shards(data_dir: str, splits=features.SPLITS) -> dict:
    """{shard path: TensorFlow's error} for every shard whose records fail their CRC checks (or that cannot be read),
    found by reading each shard once. For naming the damaged files after a DataLossError, which names none."""
    import tensorflow as tf

    damaged = {}
    for split in splits:
        for path in shard_files(data_dir, split) if _has_split(data_dir, split) else []:
            try:
                for _ in tf.data.TFRecordDataset(path, buffer_size=1 << 20):
                    pass
            except (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.PermissionDeniedError) as error:
                damaged[path] = error.message
    return damaged


def _has_split(data_dir: str, split: str) -> bool:
    version_dir, metadata = _locate(data_dir)
    return bool(dataset_contract.split_shards(metadata, version_dir, split))


def split_size(metadata: dict, split: str) -> int:
    return int(metadata["counts"].get(split, {}).get("total", 0))


def parse_example(serialized, image_size):
    """One serialized tf.train.Example -> (uint8 [h, w, 3] pixels, float32 label)."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(serialized, {
        features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
    })
    image = tf.io.decode_jpeg(parsed[features.IMAGE_KEY], channels=3)
    height, width = image_size
    # Records were resized by preprocessing; a record of another size means a mixed-up dataset, not a resize job.
    image = tf.ensure_shape(image, [height, width, 3])
    return image, tf.cast(parsed[features.LABEL_KEY], tf.float32)


def augment_batch(images, strength: float = 1.0):
    """Per image of a float32 [b, h, w, 3] batch in [0, 255]: a random horizontal flip, zoom-in crop (0-20%) at a
    random offset and rotation (+-10 degrees) as ONE bilinear projective transform with reflected borders, then
    saturation, contrast and brightness changes. ~3x faster than the equivalent chain of keras.layers.Random*
    (one resampling instead of two, arithmetic colour changes instead of an HSV round trip), measured.
    strength scales every range but the flip's (0.5: 0-10% zoom, +-5 degrees, half the colour changes; 0: flips
    only)."""
    import tensorflow as tf

    shape = tf.shape(images)
    batch = shape[0]
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)

    def uniform(low, high):
        return tf.random.uniform([batch], low, high)

    def around(centre, spread):  # uniform over centre +- spread x strength
        return uniform(centre - spread * strength, centre + spread * strength)

    angle, zoom = around(0.0, 0.175), uniform(1.0 - 0.2 * strength, 1.0)
    flip = tf.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0)
    # output pixel (x, y) samples input (m00 x + m01 y + ox, m10 x + m11 y + oy): rotate, scale and flip about the
    # centre, then shift the zoomed window by at most the margin the zoom leaves
    m00, m01 = tf.cos(angle) * zoom * flip, -tf.sin(angle) * zoom
    m10, m11 = tf.sin(angle) * zoom * flip, tf.cos(angle) * zoom
    cx, cy = (width - 1) / 2, (height - 1) / 2
    ox = cx + uniform(-1.0, 1.0) * (1 - zoom) * width / 2 - (m00 * cx + m01 * cy)
    oy = cy + uniform(-1.0, 1.0) * (1 - zoom) * height / 2 - (m10 * cx + m11 * cy)
    zeros = tf.zeros([batch])
    transforms = tf.stack([m00, m01, ox, m10, m11, oy, zeros, zeros], axis=1)
    images = tf.raw_ops.ImageProjectiveTransformV3(images=images, transforms=transforms, output_shape=shape[1:3],
                                                   interpolation="BILINEAR", fill_mode="REFLECT", fill_value=0.0)

    saturation, contrast, brightness = around(1.0, 0.3), around(1.0, 0.15), around(0.0, 0.15)
    return jitter_colour(images, saturation, contrast, brightness)


GREY = (0.299, 0.587, 0.114)  # luma weights of R, G, B


def jitter_colour(images, saturation, contrast, brightness):
    """Per image of a float32 [b, h, w, 3] batch, with float32 [b] factors: saturation (grey + s x (pixel - grey)),
    then contrast about the image's mean grey (mean + c x (pixel - mean)) plus brightness x 255, clipped to
    [0, 255]. Both changes are affine in a pixel's colour and saturation keeps its grey, so they are applied as ONE
    3x3 matrix and offset per image: four passes over the pixels instead of eleven (2.5-3x cheaper, measured)."""
    import tensorflow as tf

    grey = tf.constant(GREY)
    mean = tf.reduce_mean(tf.linalg.matvec(images, grey), axis=[1, 2])  # [b]: the mean grey, kept by saturation
    # pixel (row vector) -> pixel @ (c s I + c (1 - s) G) + (1 - c) mean + 255 b, where G[i, j] = grey[i]
    scale = (contrast * saturation)[:, None, None] * tf.eye(3)
    mix = (contrast * (1.0 - saturation))[:, None, None] * tf.tile(grey[:, None], [1, 3])
    offset = (1.0 - contrast) * mean + brightness * 255.0
    images = tf.einsum("bhwc,bcd->bhwd", images, scale + mix) + offset[:, None, None, None]
    return tf.clip_by_value(images, 0.0, 255.0)


def _beta_per_image(batch, alpha: float):
    """float32 [batch] drawn from Beta(alpha, alpha), as the ratio of two Gamma(alpha) draws (TF has no Beta)."""
    import tensorflow as tf

    first, second = tf.random.gamma([batch], alpha), tf.random.gamma([batch], alpha)
    return first / (first + second)


def mixup_batch(images, labels, alpha: float):
    """Mixup (Zhang et al., 2018): each image blended with the one before it in the batch (the batch rolled by one; the
    batches are shuffled), by a weight drawn per image from Beta(alpha, alpha), and its label blended alike."""
    import tensorflow as tf

    weight = _beta_per_image(tf.shape(images)[0], alpha)
    other_images, other_labels = tf.roll(images, 1, axis=0), tf.roll(labels, 1, axis=0)
    images = other_images + tf.reshape(weight, [-1, 1, 1, 1]) * (images - other_images)
    return images, other_labels + weight * (labels - other_labels)


def cutmix_batch(images, labels, alpha: float):
    """CutMix (Yun et al., 2019): into each image, a box of the one before it in the batch (the batch rolled by one,
    as in `mixup_batch`) is pasted: its area (1 - lam) of the image, lam drawn per image from Beta(alpha, alpha), its
    centre uniform, clipped at the borders. The label is blended by the share of the image's own pixels that remain."""
    import tensorflow as tf

    batch, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    side = tf.sqrt(1.0 - _beta_per_image(batch, alpha))  # the box's sides, as fractions of the image's

    def span(length):  # per image: [start, end) of the box along one axis, and the mask of rows (or columns) in it
        size = tf.cast(length, tf.float32)
        centre = tf.random.uniform([batch], 0.0, size)
        half = side * size / 2
        start = tf.clip_by_value(tf.round(centre - half), 0.0, size)
        end = tf.clip_by_value(tf.round(centre + half), 0.0, size)
        position = tf.cast(tf.range(length), tf.float32)[tf.newaxis, :]
        return (position >= start[:, tf.newaxis]) & (position < end[:, tf.newaxis])

    pasted = span(height)[:, :, tf.newaxis] & span(width)[:, tf.newaxis, :]  # [batch, height, width]
    other_images, other_labels = tf.roll(images, 1, axis=0), tf.roll(labels, 1, axis=0)
    images = tf.where(pasted[..., tf.newaxis], other_images, images)
    kept = 1.0 - tf.reduce_mean(tf.cast(pasted, tf.float32), axis=[1, 2])
    return images, other_labels + kept * (labels - other_labels)


def resize_batch(images, side):
    """float32 [b, h, w, 3] -> [b, side, side, 3] (bilinear, antialiased) when side < h; else unchanged. side: an
    int32 scalar tensor (progressive resizing reads it from a variable per batch)."""
    import tensorflow as tf

    def smaller():
        return tf.image.resize(images, tf.stack([side, side]), method="bilinear", antialias=True)

    return tf.cond(side < tf.shape(images)[1], smaller, lambda: images)


def auto_shard_policy(num_files: int, num_workers: int):
    import tensorflow as tf

    policy = tf.data.experimental.AutoShardPolicy
    return policy.FILE if num_files >= num_workers else policy.DATA


def should_cache(cache: str, metadata: dict, splits, limit_mb: int, size=None, low_side=None) -> bool:
    """Whether to cache decoded images: cache flag, or auto when the splits' pixels at size (default: the
    dataset's image size), plus the training split's at low_side (progressive resizing's second cache), fit in
    limit_mb."""
    if cache != "auto":
        return cache == "on"
    height, width = size or metadata["image_size"]
    pixels = sum(split_size(metadata, split) for split in splits) * height * width
    if low_side is not None and "train" in splits:
        pixels += split_size(metadata, "train") * low_side * low_side
    return pixels * 3 / 2**20 <= limit_mb


def resize(image, size):
    """uint8 [h, w, 3] -> uint8 [*size, 3]: bilinear, antialiased, rounded, the model's own Resizing layer's method
    (so the model's resize of an already resized image is the identity)."""
    import tensorflow as tf

    resized = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _by_training_side(small, large, train_side, low_side: int):
    """Per batch, when it is made: from `small` (the split cached once at low_side, where progressive resizing spends
    the first 40% of a run, most of its steps) while train_side holds low_side, else from `large` (the split at its own
    side, each batch resized to train_side). Resizing every batch from the cached side instead cost a tenth of a
    training step's CPU at 96 of 160 (docs/TRAINING.md). The second cache fills when the side first grows."""
    import tensorflow as tf

    choice = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).repeat()
    choice = choice.map(lambda _: tf.cast(train_side.value() != low_side, tf.int64))
    return tf.data.Dataset.choose_from_datasets([small, large], choice)


def make_dataset(data_dir: str, split: str, *, image_size, batch_size: int, training: bool, augment: bool = True,
                 cache: bool = False, shuffle_buffer: int | None = None, seed: int | None = None,
                 num_workers: int = 1, num_examples: int | None = None, resize_to=None, train_side=None,
                 low_side: int | None = None, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 augment_strength: float = 1.0):
    """Batches of (float32 [batch, h, w, 3] in [0, 255], float32 [batch]) from one split.

    training: shuffled, repeated forever (the caller sets steps_per_epoch), full batches only, augmented when
    `augment` (with `augment_strength`, `augment_batch`). Otherwise one deterministic pass, last batch partial.
    batch_size is the global batch: tf.distribute splits it across replicas. train_side (training only: progressive
    resizing) is an int32 variable: each batch is resized to the side it holds when the batch is made, before
    augmentation; low_side (its first side), with cache, keeps the split resized to it in a second cache
    (`_by_training_side`). num_examples (from metadata.json) makes the size known to Keras, and a split that holds
    another number of records fail.
    mixup_alpha > 0 (training only) blends the augmented batches' images and labels (`mixup_batch`); cutmix_alpha > 0
    pastes a box of another image into each, and blends the labels by area (`cutmix_batch`).
    shuffle_buffer and seed (training only) come from the caller's TrainConfig, where their defaults live.
    """
    import tensorflow as tf

    if training and shuffle_buffer is None:
        raise ValueError("make_dataset(training=True) needs a shuffle_buffer (TrainConfig.shuffle_buffer)")

    autotune = tf.data.AUTOTUNE
    files = shard_files(data_dir, split)
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 16),
                                 num_parallel_calls=autotune, deterministic=not training)
    resize_to = None if resize_to is None or list(resize_to) == list(image_size) else list(resize_to)

    def parse(record):
        image, label = parse_example(record, image_size)
        return (image if resize_to is None else resize(image, resize_to)), label

    dataset = dataset.map(parse, num_parallel_calls=autotune, deterministic=not training)
    if num_examples is not None:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_examples))

    def batches(images):  # [cached], shuffled and repeated when training, batched, float32 pixels
        if cache:
            images = images.cache()
        if training:
            images = images.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        images = images.batch(batch_size, drop_remainder=training, num_parallel_calls=autotune)
        return images.map(lambda pixels, labels: (tf.cast(pixels, tf.float32), labels), num_parallel_calls=autotune)

    if training and train_side is not None:
        resized = batches(dataset).map(lambda images, labels: (resize_batch(images, train_side.value()), labels),
                                       num_parallel_calls=autotune)
        if cache and low_side is not None and low_side < (resize_to or image_size)[0]:
            small = batches(dataset.map(lambda image, label: (resize(image, [low_side, low_side]), label),
                                        num_parallel_calls=autotune))
            resized = _by_training_side(small, resized, train_side, low_side)
        dataset = resized
    else:
        dataset = batches(dataset)
    if training and augment:
        dataset = dataset.map(lambda images, labels: (augment_batch(images, augment_strength), labels),
                              num_parallel_calls=autotune)
    if training and mixup_alpha > 0:
        dataset = dataset.map(lambda images, labels: mixup_batch(images, labels, mixup_alpha),
                              num_parallel_calls=autotune)
    if training and cutmix_alpha > 0:
        dataset = dataset.map(lambda images, labels: cutmix_batch(images, labels, cutmix_alpha),
                              num_parallel_calls=autotune)
    options = tf.data.Options()
    # Evaluation passes shard by DATA so every worker sees the same number of batches.
    policy = auto_shard_policy(len(files), num_workers) if training else tf.data.experimental.AutoShardPolicy.DATA
    options.experimental_distribute.auto_shard_policy = policy
    options.deterministic = not training
    return dataset.with_options(options).prefetch(autotune)
