"""Case 4: transient read errors are retried and nothing is lost or written twice.

Every file's first read raises ConnectionResetError (retried inside DecodeImageFn, on any runner), and two files then
fail their whole bundle once, as a lost worker would: only the runner can retry that. The default DirectRunner does
not retry bundles; BundleBasedDirectRunner does, like Dataflow, so the test runs there. Outputs of a failed bundle
attempt are discarded by the runner, so the elements processed twice must still be written once.
"""

import collections
import json

import pytest

from beam_pipelines import preprocess
from tests import corpus
from tests.reliability import faulty
from trainer import features

pytestmark = pytest.mark.slow


def _sources(output_dir) -> list[str]:
    import tensorflow as tf

    spec = {features.SOURCE_KEY: tf.io.FixedLenFeature([], tf.string)}
    files = sorted(str(path) for path in output_dir.glob("*" + features.SHARD_SUFFIX))
    return [tf.io.parse_single_example(record, spec)[features.SOURCE_KEY].numpy().decode()
            for record in tf.data.TFRecordDataset(files)]


def test_transient_read_errors_are_retried_without_losing_or_duplicating_files(tmp_path, monkeypatch):
    images, markers, output = tmp_path / "images", tmp_path / "markers", tmp_path / "data"
    files = corpus.write_easy_dataset(images, per_class=6, size=32)
    for i in range(2):
        flaky = images / "dog" / f"{faulty.FLAKY}-{i}.jpg"
        flaky.write_bytes(corpus.encode(corpus.easy_pixels(1, 900 + i, 32)))
        files.append(flaky)
    markers.mkdir()
    monkeypatch.setenv(faulty.MARKER_DIR_ENV, str(markers))
    monkeypatch.setattr(preprocess, "_READ_BACKOFF_SECONDS", 0.01)  # BundleBasedDirectRunner runs in this process

    metadata = preprocess.run([f"--input={images}", f"--output_dir={output}", "--runner=BundleBasedDirectRunner",
                               "--num_shards=1", "--split_ratios=1,0,0", "--image_size=16",
                               "--read_fn=tests.reliability.faulty:read_flaky", "--decode_timeout_seconds=0"])

    assert len(list(markers.glob("io-*"))) == len(files)  # every file did fail its first read ...
    assert len(list(markers.glob("bundle-*"))) == 2  # ... two bundles failed, and the job still finished ...
    reads = collections.Counter((markers / "reads.log").read_text().splitlines())
    print(f"{sum(reads.values())} successful reads of {len(files)} files (bundle retries re-read the others)")
    assert set(reads) == set(map(str, files))
    assert metadata["read"] == len(files) and metadata["rejected"] == {}  # ... yet each file counts once
    assert metadata["written"] + metadata["duplicates"] == len(files)
    sources = _sources(output)
    assert len(sources) == len(set(sources)) == metadata["written"]  # and is written once
    assert json.loads((output / "metadata.json").read_text())["read"] == len(files)
