"""Case 10: what decodes untrusted images and loads models is the version docs/RELIABILITY.md vouches for.

The pins live in setup.py; the Makefile installs them, Pillow over apache-beam's cap (setup.py's OVERRIDES). These
tests read the versions that are really installed, so a setup that silently kept Beam's older Pillow, or a pin
moved without updating the document, fails here.
"""

import ast
import re
from importlib import metadata

import pytest

from tests.trainer.datasets import REPO


def setup_py(name: str):
    tree = ast.parse((REPO / "setup.py").read_text())
    return next(ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == name)


PINS = setup_py("PINS")


def pinned_version(name: str) -> str:
    return PINS[name].split("==")[1]


@pytest.mark.parametrize("name", ["pillow", "keras", "tensorflow-cpu", "numpy", "apache-beam"])
def test_installed_versions_are_the_pins(name):
    distribution = name.replace("[gcp]", "")
    assert metadata.version(distribution) == pinned_version(name)


def test_pillow_is_installed_over_beams_cap_and_the_override_is_explained():
    overrides = setup_py("OVERRIDES")
    assert set(overrides) == {"pillow"}
    beam_requires = [r for r in metadata.requires("apache-beam") if r.startswith("pillow") and "extra" not in r]
    # The day Beam accepts the pinned Pillow, the override (and this test) should go.
    assert beam_requires and "<13" in beam_requires[0], beam_requires
    from PIL import __version__ as installed

    assert installed == pinned_version("pillow")


def test_reliability_doc_names_the_versions_that_are_installed():
    """docs/RELIABILITY.md's dependency table must describe what runs, codecs included."""
    from PIL import features

    doc = (REPO / "docs" / "RELIABILITY.md").read_text()
    table = doc.split("## Dependencies", 1)[1]
    for name in ("pillow", "keras", "tensorflow-cpu"):
        assert re.search(rf"\b{re.escape(pinned_version(name))}\b", table), f"{name} {pinned_version(name)}"
    for codec in ("libjpeg_turbo", "webp", "zlib_ng"):  # the C code that parses the photos we accept
        version = features.version(codec)
        assert version and re.search(rf"\b{re.escape(version)}\b", table), \
            f"bundled {codec} {version} is not in docs/RELIABILITY.md"


def test_keras_safe_mode_is_on_by_default_and_nothing_of_ours_turns_it_off():
    """The scorer never deserialises Keras files (test_untrusted_models.py) and the trainer only loads weights. Should
    a later change load a model file, Keras' default must still refuse Lambda layers."""
    import inspect

    import keras
    from keras.src.saving import serialization_lib

    # imported for their import-time effects, which must not include the switch
    import beam_pipelines.model_handler  # noqa: F401
    import beam_pipelines.preprocess  # noqa: F401
    import beam_pipelines.score  # noqa: F401
    import trainer.export  # noqa: F401
    import trainer.train  # noqa: F401

    assert inspect.signature(keras.models.load_model).parameters["safe_mode"].default is True
    assert serialization_lib.in_safe_mode() is not False  # keras.config.enable_unsafe_deserialization() sets False
