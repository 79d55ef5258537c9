"""Keras's own ``normalization_test.py`` (shipped in the keras wheel) run with ``FastNorm``
substituted for ``Normalization``: the layer must be a drop-in replacement."""

import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
upstream = pytest.importorskip("keras.src.layers.preprocessing.normalization_test")

import keras.src.layers as keras_src_layers  # noqa: E402

from fastmoments.keras import FastNorm  # noqa: E402

# Keras's tests adapt on constant features (test_adapt_tf_dataset_with_labels), where FastNorm
# warns on purpose; the warning is tested in test_keras.py.
# Keras's run_layer_test harness itself warns (with Normalization too) that it ignores shuffle=
# for a generator and that the model it fits has no trainable weights.
# Without the compiled op, fastmoments.tf warns once that it falls back (tested in test_tf.py).
pytestmark = [
    pytest.mark.filterwarnings("ignore::fastmoments.tf.OpFallbackWarning"),
    pytest.mark.filterwarnings("ignore:The model does not have any trainable weights:UserWarning"),
    pytest.mark.filterwarnings("ignore::fastmoments.keras.FastNormWarning"),
    pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning"),
]


@pytest.fixture(autouse=True)
def fastnorm_as_normalization(monkeypatch):
    # The upstream module builds layers as ``layers.Normalization`` (keras.src.layers) and, in
    # one test, ``keras.layers.Normalization``; both names point to FastNorm while a test runs.
    monkeypatch.setattr(keras_src_layers, "Normalization", FastNorm)
    monkeypatch.setattr(keras.layers, "Normalization", FastNorm)
    yield


def test_substitution_is_in_effect():
    assert upstream.layers.Normalization is FastNorm
    assert keras.layers.Normalization is FastNorm


# Collected by pytest as a unittest.TestCase; the autouse fixture applies to its tests.
NormalizationTest = upstream.NormalizationTest
