"""Schemathesis over the OpenAPI document: generated requests to every documented route never get a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings


@pytest.fixture(scope="module")
def api_schema(module_app):
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", module_app)


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
