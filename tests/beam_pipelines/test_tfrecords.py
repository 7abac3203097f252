"""TFRecord framing without TensorFlow: TensorFlow reads what it writes, and a damaged file is refused."""

import pytest

from beam_pipelines import tfrecords


def test_tensorflow_reads_what_we_write(tmp_path):
    tf = pytest.importorskip("tensorflow")
    records = [b"", b"a", bytes(range(256)) * 50]
    path = tmp_path / "x.tfrecord"
    path.write_bytes(tfrecords.encode(records))
    assert [record.numpy() for record in tf.data.TFRecordDataset(str(path))] == records
    assert tfrecords.decode(path.read_bytes()) == records


@pytest.mark.parametrize("damage", [
    lambda data: data[:-1],  # truncated
    lambda data: data[:20] + bytes([data[20] ^ 1]) + data[21:],  # a flipped bit in the first record's data
    lambda data: bytes([data[0] ^ 1]) + data[1:],  # a flipped bit in a length
])
def test_a_damaged_file_is_refused(damage):
    data = tfrecords.encode([b"first record bytes", b"second"])
    with pytest.raises(ValueError):
        tfrecords.decode(damage(data))
