"""Schemathesis over the OpenAPI document: generated requests to every documented route never get a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from api import create_app
from db.migrate import upgrade
from pipeline.settings import Settings


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, model_dir):
    tmp = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{tmp / 'hv.sqlite'}"
    upgrade(url)
    app = create_app(Settings(var_dir=str(tmp), database_url=url, broker_url="memory://", storage_root=str(tmp / "s"), model_dir=str(model_dir),
                              allowed_folder_root=str(tmp), max_upload_bytes=2_000_000))
    yield schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    app.extensions["hematovision"].db.dispose()


def test_no_route_answers_5xx(api_schema):
    """Every operation of the document, with requests generated from its parameters and bodies."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call()
            assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])

        check()
