"""Image storage: atomic writes, and many writes made durable by one sync."""

from __future__ import annotations

import pytest

from pipeline.storage import ImageStore


def test_intake_writes_without_per_file_fsync_then_one_sync(tmp_path):
    store = ImageStore(tmp_path / "storage")
    keys = [store.key_for("a" * 32, seq, ".jpg") for seq in range(1, 21)]
    for i, key in enumerate(keys):
        store.put(key, bytes([i]) * 100, durable=False)
    store.sync()
    assert [store.get(k) for k in keys] == [bytes([i]) * 100 for i in range(20)]
    assert not list((tmp_path / "storage").rglob(".tmp-*"))  # no temporary file left behind
    ImageStore(tmp_path / "fresh").sync()  # a root not created yet is fine
    with pytest.raises(ValueError, match="invalid storage key"):
        store.put("../escape.jpg", b"x", durable=False)
