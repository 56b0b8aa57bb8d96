"""Selective int8 export (``training.export``): the layers that quantise worst can stay in float."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.tensorflow,
              # TensorFlow's converter warns that a float input has no quantisation statistics: the input stays float
              pytest.mark.filterwarnings("ignore:Statistics for quantized inputs:UserWarning"),
              pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")]


def _tiny_model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_a")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))


def _int8_tensors(tflite: bytes) -> int:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite)
    return sum(d["dtype"] == np.int8 for d in interpreter.get_tensor_details())


def test_worst_layers_kept_in_float_leave_fewer_int8_tensors_and_the_model_still_runs():
    from ai_edge_litert.interpreter import Interpreter

    from training.export import to_tflite_int8, worst_quantised_layers

    model = _tiny_model()
    calibration = np.random.default_rng(0).uniform(-1, 1, (20, 16, 16, 3)).astype(np.float32)
    worst = worst_quantised_layers(model, calibration)
    assert worst and len(set(worst)) == len(worst)
    full, selective = to_tflite_int8(model, calibration), to_tflite_int8(model, calibration, worst[:2])
    assert _int8_tensors(selective) < _int8_tensors(full)
    interpreter = Interpreter(model_content=selective)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], calibration[:1])
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, np.asarray(model(calibration[:1])), atol=0.1)
