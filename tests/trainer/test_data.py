import numpy as np
import pytest

from tests.trainer.datasets import write_dataset
from trainer import data, dataset_contract

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), size=32, per_class={"train": 10, "validation": 4,
                                                                              "test": 4}, num_shards=3)


def test_missing_metadata_says_run_preprocessing_first(tmp_path):
    with pytest.raises(data.DatasetMissing, match="Run preprocessing first"):
        data.read_metadata(str(tmp_path))


def test_parse_example_eagerly_and_in_dataset_map(dataset_dir):
    record = next(iter(tf.data.TFRecordDataset(data.shard_files(str(dataset_dir), "test"))))
    eager_image, eager_label = data.parse_example(record, (32, 32))
    mapped = tf.data.Dataset.from_tensors(record).map(lambda r: data.parse_example(r, (32, 32)))
    image, label = next(iter(mapped))
    assert image.dtype == tf.uint8 and image.shape == (32, 32, 3) and label.dtype == tf.float32
    np.testing.assert_array_equal(eager_image.numpy(), image.numpy())
    assert float(eager_label) == float(label)


def test_evaluation_pass_sees_every_record_once_in_order(dataset_dir):
    batches = data.make_dataset(str(dataset_dir), "test", image_size=(32, 32), batch_size=3, training=False)
    labels = np.concatenate([labels.numpy() for _, labels in batches])
    assert len(labels) == 8 and labels.sum() == 4
    again = np.concatenate([labels.numpy() for _, labels in batches])
    np.testing.assert_array_equal(labels, again)


def test_training_batches_are_full_augmented_and_in_pixel_range(dataset_dir):
    kwargs = {"image_size": (32, 32), "batch_size": 8, "training": True, "cache": True, "seed": 3,
              "shuffle_buffer": 64}
    plain = data.make_dataset(str(dataset_dir), "train", augment=False, **kwargs)
    augmented = data.make_dataset(str(dataset_dir), "train", augment=True, **kwargs)
    for images, labels in augmented.take(5):  # 20 records, repeated: more batches than one pass holds
        assert images.shape == (8, 32, 32, 3) and images.dtype == tf.float32 and labels.shape == (8,)
        assert float(tf.reduce_min(images)) >= 0 and float(tf.reduce_max(images)) <= 255
    plain_values = {float(tf.reduce_sum(images)) for images, _ in plain.take(5)}
    for images, _ in plain.take(1):
        assert np.allclose(images.numpy(), np.round(images.numpy()))  # decoded JPEG values, untouched
    augmented_images = next(iter(augmented))[0].numpy()
    assert not np.allclose(augmented_images, np.round(augmented_images))  # interpolated: augmentation ran
    assert len(plain_values) > 1


def test_augment_strength_scales_the_ranges_and_zero_leaves_flips_only():
    ramp = np.linspace(0, 255, 32, dtype=np.float32)
    images = tf.constant(np.stack([ramp[None, :] * 0.5 + ramp[:, None] * 0.5] * 3, axis=-1)[None].repeat(64, 0))
    mirrored = images.numpy()[:, :, ::-1]

    def distance_from_a_flip(strength):  # per image: how far the output is from the image or its mirror
        tf.random.set_seed(5)
        out = data.augment_batch(images, strength).numpy()
        return np.minimum(np.abs(out - images.numpy()).max(axis=(1, 2, 3)), np.abs(out - mirrored).max(axis=(1, 2, 3)))

    flips_only = distance_from_a_flip(0.0)
    assert flips_only.max() < 1e-3  # every image is itself or its mirror image, nothing else changed
    assert 0 < np.median(distance_from_a_flip(0.5)) < np.median(distance_from_a_flip(1.0))


def test_colour_jitter_applies_the_per_pixel_formulas_as_one_matrix_per_image():
    rng = np.random.default_rng(4)
    images = rng.uniform(0, 255, (6, 5, 7, 3)).astype(np.float32)
    saturation, contrast, brightness = (rng.uniform(low, high, 6).astype(np.float32)
                                        for low, high in ((0.4, 1.6), (0.7, 1.3), (-0.3, 0.3)))
    grey = (images * np.array(data.GREY, np.float32)).sum(-1, keepdims=True)
    per_image = lambda values: values[:, None, None, None]  # noqa: E731
    expected = grey + per_image(saturation) * (images - grey)
    mean = grey.mean(axis=(1, 2, 3), keepdims=True)
    expected = (expected - mean) * per_image(contrast) + mean + per_image(brightness) * 255
    out = data.jitter_colour(tf.constant(images), *map(tf.constant, (saturation, contrast, brightness))).numpy()
    np.testing.assert_allclose(out, np.clip(expected, 0, 255), atol=2e-3)
    assert 0 < (out == 255).mean() < 0.5 and (out == 0).any()  # the clip was exercised, on part of the pixels


def test_mixup_blends_each_image_and_its_label_with_the_same_weight():
    images = tf.constant(np.arange(8, dtype=np.float32).reshape(8, 1, 1, 1) * 10 * np.ones((1, 4, 4, 3), np.float32))
    labels = tf.constant([0, 1] * 4, tf.float32)
    mixed, soft = (tensor.numpy() for tensor in data.mixup_batch(images, labels, 0.4))
    previous = np.roll(np.arange(8), 1)  # each image is blended with the one before it
    labels = labels.numpy()
    weight = (soft - labels[previous]) / (labels - labels[previous])  # neighbours' labels differ here
    assert np.all((weight >= 0) & (weight <= 1)) and np.ptp(weight) > 0  # drawn per image
    expected = weight * np.arange(8) * 10 + (1 - weight) * previous * 10
    np.testing.assert_allclose(mixed, expected.reshape(8, 1, 1, 1) * np.ones((1, 4, 4, 3)), rtol=1e-5, atol=1e-3)


def test_cutmix_pastes_one_box_of_the_previous_image_and_blends_the_label_by_its_area():
    tf.random.set_seed(11)
    images = tf.constant(np.arange(1, 9, dtype=np.float32).reshape(8, 1, 1, 1) * np.ones((1, 12, 16, 3), np.float32))
    labels = tf.constant([0, 1] * 4, tf.float32)
    mixed, soft = (tensor.numpy() for tensor in data.cutmix_batch(images, labels, 1.0))
    own, previous = np.arange(1, 9), np.roll(np.arange(1, 9), 1)  # each image takes its box from the one before it
    pasted = mixed[..., 0] == previous[:, None, None]
    assert np.all(pasted | (mixed[..., 0] == own[:, None, None]))  # every pixel is its own or the previous image's
    assert np.all(mixed == mixed[..., :1])  # whole pixels are pasted, all channels alike
    for box in pasted:  # the pasted pixels form one rectangle: the product of its rows and its columns
        np.testing.assert_array_equal(box, np.outer(box.any(axis=1), box.any(axis=0)))
    kept = 1 - pasted.mean(axis=(1, 2))
    assert 0 < kept.min() < 1 and np.ptp(kept) > 0  # boxes of several sizes, drawn per image
    labels = labels.numpy()
    np.testing.assert_allclose(soft, labels[previous - 1] + kept * (labels - labels[previous - 1]), atol=1e-6)


@pytest.mark.parametrize("mixing", ["mixup_alpha", "cutmix_alpha"])
def test_training_batches_carry_blended_labels_only_when_mixed(dataset_dir, mixing):
    kwargs = {"image_size": (32, 32), "batch_size": 8, "training": True, "cache": True, "seed": 3,
              "shuffle_buffer": 64, "augment": False}
    plain = np.concatenate([labels.numpy() for _, labels in data.make_dataset(str(dataset_dir), "train",
                                                                              **kwargs).take(5)])
    assert set(plain) == {0.0, 1.0}
    mixed = np.concatenate([labels.numpy() for _, labels in data.make_dataset(str(dataset_dir), "train",
                                                                              **{mixing: 1.0}, **kwargs).take(5)])
    assert np.all((mixed >= 0) & (mixed <= 1)) and np.any((mixed > 0) & (mixed < 1))


def test_corrupt_tfrecord_fails_loudly(tmp_path):
    root = write_dataset(tmp_path / "data", size=32, per_class={"train": 6, "validation": 2, "test": 2},
                         num_shards=1)
    shard = root / "v00001" / dataset_contract.shard_name("test", "s000")
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 0xFF  # flip bits inside a record: its CRC no longer matches
    shard.write_bytes(bytes(content))
    batches = data.make_dataset(str(root), "test", image_size=(32, 32), batch_size=2, training=False)
    with pytest.raises((tf.errors.DataLossError, tf.errors.InvalidArgumentError)):
        for _ in batches:
            pass


def test_records_of_another_size_fail_loudly(dataset_dir):
    batches = data.make_dataset(str(dataset_dir), "test", image_size=(40, 40), batch_size=2, training=False)
    with pytest.raises(tf.errors.InvalidArgumentError):
        next(iter(batches))


def test_shard_policy_and_cache_choice():
    policy = tf.data.experimental.AutoShardPolicy
    assert data.auto_shard_policy(num_files=1, num_workers=2) == policy.DATA
    assert data.auto_shard_policy(num_files=8, num_workers=2) == policy.FILE
    metadata = {"image_size": [180, 180], "counts": {"train": {"total": 20000}, "validation": {"total": 2000}}}
    assert data.should_cache("auto", metadata, ("train", "validation"), limit_mb=4096)  # ~2.1 GB of pixels
    assert not data.should_cache("auto", metadata, ("train", "validation"), limit_mb=1024)
    assert data.should_cache("on", metadata, ("train",), limit_mb=0)
    assert not data.should_cache("off", metadata, ("train",), limit_mb=4096)
    # at 160: 1,611 MB; with the training split's second cache at 96 (progressive resizing), 527 MB more
    assert data.should_cache("auto", metadata, ("train", "validation"), limit_mb=2048, size=(160, 160))
    assert not data.should_cache("auto", metadata, ("train", "validation"), limit_mb=2048, size=(160, 160),
                                 low_side=96)
    assert data.should_cache("auto", metadata, ("train", "validation"), limit_mb=2200, size=(160, 160), low_side=96)


def test_record_counts_are_checked_against_metadata_before_training(tmp_path):
    root = write_dataset(tmp_path / "data", size=32, per_class={"train": 6, "validation": 2, "test": 2},
                         num_shards=2)
    data.check_record_counts(str(root))  # as written: passes
    shard = root / "v00001" / dataset_contract.shard_name("train", "s001")
    records = list(tf.data.TFRecordDataset(str(shard)))
    with tf.io.TFRecordWriter(str(shard)) as writer:  # one record lost, every remaining one intact
        for record in records[:-1]:
            writer.write(record.numpy())
    with pytest.raises(data.DatasetMissing, match="train split holds 11 records but metadata.json lists 12"):
        data.check_record_counts(str(root))


def test_the_start_side_batches_come_from_a_second_cache_holding_the_same_photos_resized_once(dataset_dir):
    def one_pass(low_side):  # the 20 training photos, each once (the buffer shuffles the whole split)
        side = tf.Variable(16, dtype=tf.int32)
        batches = data.make_dataset(str(dataset_dir), "train", image_size=(32, 32), batch_size=4, training=True,
                                    cache=True, seed=3, shuffle_buffer=64, train_side=side, low_side=low_side,
                                    augment=False)
        in_order = tf.data.Options()
        in_order.deterministic = True  # so 5 batches are one pass, not a batch of the next one out of order
        return np.concatenate([images.numpy() for images, _ in batches.with_options(in_order).take(5)]), batches, side

    cached, batches, side = one_pass(low_side=16)
    resized_per_batch, _, _ = one_pass(low_side=None)
    assert cached.shape == resized_per_batch.shape == (20, 16, 16, 3)
    np.testing.assert_array_equal(cached, np.round(cached))  # resized once, kept as 8-bit pixels
    assert not np.allclose(resized_per_batch, np.round(resized_per_batch))
    # the same photos and the same resize, rounded: each cached image is within half a level of its own match
    distance = np.abs(cached[:, None] - resized_per_batch[None]).max(axis=(2, 3, 4))
    assert sorted(distance.argmin(axis=1)) == list(range(20)) and distance.min(axis=1).max() <= 0.5 + 1e-3
    side.assign(32)  # growing: the split at its own side, resized per batch
    assert next(iter(batches))[0].shape == (4, 32, 32, 3)
    side.assign(24)
    images = next(iter(batches))[0].numpy()
    assert images.shape == (4, 24, 24, 3) and not np.allclose(images, np.round(images))


def test_progressive_resizing_batches_follow_the_side_variable(dataset_dir):
    side = tf.Variable(16, dtype=tf.int32)
    batches = data.make_dataset(str(dataset_dir), "train", image_size=(32, 32), batch_size=4, training=True,
                                cache=True, seed=3, shuffle_buffer=64, train_side=side)
    for images, _ in batches.take(2):
        assert images.shape == (4, 16, 16, 3)  # augmented at the smaller side, not resized back
        assert float(tf.reduce_min(images)) >= 0 and float(tf.reduce_max(images)) <= 255
    side.assign(32)
    for images, _ in batches.take(2):  # a new iterator reads the new side
        assert images.shape == (4, 32, 32, 3)
    side.assign(64)  # never upsampled: the cached side is the largest
    assert next(iter(batches))[0].shape == (4, 32, 32, 3)
