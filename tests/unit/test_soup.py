"""Model soups (``training.soup``): the average is exact, layouts must match, files with and without the feature output mix."""

from __future__ import annotations

import numpy as np
import pytest

from training.soup import average_weights

pytestmark = pytest.mark.tensorflow


def test_average_is_the_element_wise_mean_in_the_original_dtype():
    a = [np.array([[1.0, 2.0]], np.float32), np.array([0.0], np.float32)]
    b = [np.array([[3.0, 6.0]], np.float32), np.array([1.0], np.float32)]
    mean = average_weights([a, b])
    assert [m.dtype for m in mean] == [np.float32, np.float32]
    assert np.array_equal(mean[0], [[2.0, 4.0]]) and np.array_equal(mean[1], [0.5])


def test_different_layouts_and_a_single_network_are_refused():
    a = [np.zeros((2, 2), np.float32)]
    with pytest.raises(ValueError, match="layout"):
        average_weights([a, [np.zeros((2, 3), np.float32)]])
    with pytest.raises(ValueError, match="layout"):
        average_weights([a, a + a])
    with pytest.raises(ValueError, match="at least two"):
        average_weights([a])


def test_soup_of_two_saved_networks(tmp_path):
    from training.export import with_features
    from training.model import base_of, build_model
    from training.soup import soup_of

    first, second = build_model(8, 64, None), build_model(8, 64, None)
    second.get_layer("logits").set_weights([w + 1.0 for w in second.get_layer("logits").get_weights()])
    first.save(str(tmp_path / "a.keras"))
    with_features(second).save(str(tmp_path / "b.keras"))  # as shipped models are saved
    soup = soup_of([tmp_path / "a.keras", tmp_path / "b.keras"])
    for mixed, x, y in zip(base_of(soup).get_weights(), base_of(first).get_weights(), base_of(second).get_weights(), strict=True):
        assert np.allclose(mixed, (x + y) / 2, atol=1e-6)
    kernels = [m.get_layer("logits").get_weights()[0] for m in (soup, first, second)]
    assert np.allclose(kernels[0], (kernels[1] + kernels[2]) / 2, atol=1e-6)

    alone = soup_of([tmp_path / "a.keras", tmp_path / "a.keras"])  # a network's soup with itself is the network
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    assert np.allclose(alone.predict(x, verbose=0), first.predict(x, verbose=0), atol=1e-5)
