"""Weight averaging along the fine-tuning trajectory (SWA / SWAD-style dense averaging).

Why: a model that sits in a flat region of the loss tends to transfer better to
data it never saw; averaging the weights the optimiser visits after the first
epoch finds such a region at no inference cost (Izmailov et al., 2018, "Averaging
weights leads to wider optima"; Cha et al., 2021, "SWAD: domain generalization by
seeking flat minima"). Batch norm stays frozen in this project (inference mode,
statistics from ImageNet), so the averaged weights need no statistics pass.

Config: ``weight_averaging: "dense"`` averages every ``AVERAGE_EVERY`` steps from
the second fine-tuning epoch on; ``""`` (default) keeps the best-validation-loss
checkpoint. Whether it is used is decided by leave-one-laboratory-out
(``training.lolo``), never by the test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: steps between two snapshots averaged
AVERAGE_EVERY = 10
#: first epoch (0-based) whose weights enter the average: the first one is still far from any optimum
START_EPOCH = 1


def weight_average_callback(state_path: Path, start_epoch: int = START_EPOCH, every: int = AVERAGE_EVERY):
    """A Keras callback keeping the running mean of the trainable weights; ``on_train_end`` installs it.

    The running mean and its count are saved to ``state_path`` (``.npz``) at every epoch end, so a run
    resumed by ``BackupAndRestore`` continues the same average.
    """
    import keras

    class WeightAverage(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0
            self.mean: list[np.ndarray] | None = None
            self.epoch = 0

        def on_train_begin(self, logs=None):
            if state_path.is_file():
                saved = np.load(state_path)
                self.count = int(saved["count"])
                self.mean = [saved[f"w{i}"] for i in range(len(saved.files) - 1)]

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch < start_epoch or (batch + 1) % every:
                return
            current = [np.asarray(w) for w in self.model.trainable_weights]
            self.count += 1
            if self.mean is None:
                self.mean = [w.astype(np.float64) for w in current]
            else:
                for m, w in zip(self.mean, current, strict=True):
                    m += (w - m) / self.count

        def on_epoch_end(self, epoch, logs=None):
            if self.mean is not None:
                np.savez(state_path, count=self.count, **{f"w{i}": m for i, m in enumerate(self.mean)})

        def on_train_end(self, logs=None):
            if self.mean is not None:
                for variable, m in zip(self.model.trainable_weights, self.mean, strict=True):
                    variable.assign(m.astype(np.float32))

    return WeightAverage()
