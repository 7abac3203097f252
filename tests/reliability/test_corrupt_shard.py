"""Case 6: a TFRecord shard with a flipped byte stops training loudly (its CRC), naming the shard, instead of
training on wrong data or quietly on fewer records.

(The input pipeline alone raising on such a record is tests/trainer/test_data.py::test_corrupt_tfrecord_fails_loudly;
this is the whole trainer, as `make train` runs it.)
"""

import pytest

from tests.trainer.datasets import write_dataset
from tests.trainer.test_train import SMALL_NET
from trainer import train

pytestmark = pytest.mark.slow


def test_a_flipped_byte_in_a_training_shard_stops_training_and_names_the_shard(tmp_path, capsys):
    dataset = write_dataset(tmp_path / "data", size=32, per_class={"train": 24, "validation": 8, "test": 8},
                            num_shards=2)
    shard = dataset / "v00001" / "train-s001.tfrecord"
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 0x01  # one bit, in the middle of some record's JPEG bytes
    shard.write_bytes(bytes(content))
    model_dir = tmp_path / "model"

    status = train.main(["--data_dir", str(dataset), "--model_dir", str(model_dir), *SMALL_NET, "--epochs", "2",
                         "--batch_size", "8", "--warmup_epochs", "0"])
    assert status == train.EXIT_DAMAGED_DATA
    err = capsys.readouterr().err
    assert "is damaged (TFRecord CRC mismatch" in err and "re-run preprocessing" in err
    assert str(shard) in err and "train-s000" not in err  # the damaged shard, and only it
    assert not (model_dir / "metrics.json").exists() and not (model_dir / "export").exists()
