import pytest

from trainer import features


@pytest.mark.parametrize(("name", "expected"), [
    ("cat", 0), ("Cat", 0), ("CATS", 0), ("dogs", 1), ("Dog", 1), ("doges", 1), ("bird", None), ("", None),
])
def test_label_for_name_is_case_and_plural_insensitive(name, expected):
    assert features.label_for_name(name) == expected


def test_class_names_are_validated():
    assert features.validate_class_names(["ant", "bee"]) == ("ant", "bee")
    for bad in (["cat"], ["cat", "cat"], ["Cat", "dog"], ["cat", "dog", "bird"]):
        with pytest.raises(ValueError):
            features.validate_class_names(bad)


def test_hand_written_examples_parse_in_tensorflow():
    tf = pytest.importorskip("tensorflow")
    record = features.make_example(image_jpeg=b"\xff\xd8jpeg\x00bytes", height=180, width=160, label=1,
                                   class_name="dog", image_id="ab" * 32, source="gs://b/dög, 1.jpg")
    parsed = tf.train.Example.FromString(record)
    feature = parsed.features.feature
    assert feature[features.IMAGE_KEY].bytes_list.value == [b"\xff\xd8jpeg\x00bytes"]
    assert feature[features.HEIGHT_KEY].int64_list.value == [180]
    assert feature[features.WIDTH_KEY].int64_list.value == [160]
    assert feature[features.LABEL_KEY].int64_list.value == [1]
    assert feature[features.CLASS_KEY].bytes_list.value == [b"dog"]
    assert feature[features.SOURCE_KEY].bytes_list.value == ["gs://b/dög, 1.jpg".encode()]


def test_negative_and_large_integers_round_trip():
    tf = pytest.importorskip("tensorflow")
    record = features.encode_example({"a": -5, "b": 2**40, "c": 0.5})
    feature = tf.train.Example.FromString(record).features.feature
    assert feature["a"].int64_list.value == [-5]
    assert feature["b"].int64_list.value == [2**40]
    assert feature["c"].float_list.value == [0.5]
