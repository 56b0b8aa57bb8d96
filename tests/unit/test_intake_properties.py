"""Property-based tests of intake: whatever a client sends, the answer is a clean path or an IntakeError, never a crash."""

from __future__ import annotations

import contextlib
import io
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.intake import MAX_PATH_CHARS, IntakeError, Limits, clean_relative_path, iter_zip
from tests.conftest import jpeg_bytes
from tests.unit.test_api import upload

LIMITS = Limits(max_total_bytes=1_000_000, max_file_bytes=100_000, max_files=20)
names = st.one_of(st.text(max_size=300), st.lists(st.sampled_from(["a", "..", ".", "", "/", "\\", "C:", "x\x00", "é", "~"]), max_size=12)
                  .map("".join))


@given(names)
def test_a_name_is_refused_or_comes_out_clean(name):
    try:
        clean = clean_relative_path(name)
    except IntakeError:
        return
    parts = clean.split("/")
    assert clean and not clean.startswith("/") and ".." not in parts and "" not in parts and "." not in parts
    assert len(clean) <= MAX_PATH_CHARS and not any(ord(c) < 32 or ord(c) == 127 for c in clean) and "\\" not in clean


@given(st.binary(max_size=2000))
def test_any_bytes_as_a_zip_give_items_or_an_intake_error(data):
    with contextlib.suppress(IntakeError):
        list(iter_zip(io.BytesIO(data), LIMITS))


@given(st.dictionaries(names, st.binary(max_size=50), max_size=6), st.integers(0, 60))
def test_a_damaged_real_zip_gives_clean_items_or_an_intake_error(members, cut):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        written = {name.split("\x00")[0]: data for name, data in members.items()}  # zipfile's writer cuts names at NUL
        for name, data in written.items():
            if name:
                zf.writestr(name, data)
    data = buf.getvalue()
    try:
        items = list(iter_zip(io.BytesIO(data[: len(data) - cut]), LIMITS))
    except IntakeError:
        return
    assert all(path == clean_relative_path(path) for path, _ in items)


@pytest.fixture(scope="module")
def client(module_app):
    return module_app.test_client()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names, form_name=st.text(max_size=40), batch=st.text(max_size=6))
def test_the_api_answers_4xx_or_202_to_any_names_never_5xx(client, name, form_name, batch):
    r = upload(client, {name or "x": jpeg_bytes()}, name=form_name, batch_size=batch)
    assert r.status_code in (202, 400, 413, 422), r.get_data(as_text=True)[:300]
    assert r.is_json and ("error" in r.get_json() or r.get_json()["status"] == "queued")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                         lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20))
def test_any_json_body_is_answered_with_4xx_never_5xx(client, body):
    r = client.post("/api/v1/jobs", json=body)
    assert 400 <= r.status_code < 500 and r.is_json
