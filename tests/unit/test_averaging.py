"""Weight averaging along the fine-tuning trajectory (``training.averaging``)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.tensorflow


def _model_and_data():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(0)
    return model, rng.normal(size=(40, 3)).astype("float32"), rng.normal(size=(40, 2)).astype("float32")


def test_installed_weights_are_the_mean_of_the_snapshots_after_the_first_epoch(tmp_path):
    import keras

    from training.averaging import weight_average_callback

    model, x, y = _model_and_data()
    snapshots = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch >= 1 and (batch + 1) % 2 == 0:
                snapshots.append([np.asarray(w).copy() for w in self.model.trainable_weights])

    model.fit(x, y, batch_size=4, epochs=3, verbose=0, shuffle=False,
              callbacks=[Record(), weight_average_callback(tmp_path / "avg.npz", start_epoch=1, every=2)])
    assert len(snapshots) == 10  # 2 epochs x 10 steps / every 2
    expected = [np.mean([s[i] for s in snapshots], axis=0) for i in range(2)]
    for variable, mean in zip(model.trainable_weights, expected, strict=True):
        np.testing.assert_allclose(np.asarray(variable), mean, atol=1e-6)
    assert not np.allclose(expected[0], snapshots[-1][0])  # the average is not simply the last weights


def test_a_resumed_run_continues_the_saved_average(tmp_path):
    from training.averaging import weight_average_callback

    model, x, y = _model_and_data()
    state = tmp_path / "avg.npz"
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[weight_average_callback(state, start_epoch=1, every=5)])
    saved = np.load(state)
    assert int(saved["count"]) == 2
    callback = weight_average_callback(state, start_epoch=0, every=5)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[callback])
    assert callback.count == 4
