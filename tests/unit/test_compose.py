"""docker-compose.yml and the Dockerfile, checked by hand (no Docker engine here).

Every command a service runs must point at code that exists in this repository.
"""

from __future__ import annotations

import importlib
import re
import tomllib

import pytest
import yaml

from tests.conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
_VARIABLE = re.compile(r"\$\{(\w+):-([^}]*)\}")


def interpolate(env: dict, given: dict[str, str] | None = None) -> dict[str, str]:
    """What compose passes to the container: ``${VAR:-default}`` resolved from ``given`` (the operator's shell)."""
    return {k: _VARIABLE.sub(lambda m: (given or {}).get(m.group(1)) or m.group(2), str(v)) for k, v in env.items()}
SERVICES = COMPOSE["services"]
APP_SERVICES = ["migrate", "api", "worker", "flower"]


def test_services_present():
    assert {"redis", "postgres", "api", "worker", "migrate", "flower"} <= set(SERVICES)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_share_settings_and_storage(name):
    svc = SERVICES[name]
    env = svc["environment"]
    assert env["HEMATOVISION_BROKER_URL"].startswith("redis://redis:")
    assert "@postgres:5432/" in env["HEMATOVISION_DATABASE_URL"]
    assert "storage:" + env["HEMATOVISION_STORAGE_ROOT"] in svc["volumes"]
    assert svc["build"] == "."
    from pipeline.settings import Settings

    Settings.from_env(interpolate(env))  # every value parses


def test_worker_scales_horizontally():
    worker = SERVICES["worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N must not collide


def _module_attr_exists(spec: str) -> bool:
    module, _, attr = spec.partition(":")
    mod = importlib.util.find_spec(module)
    if mod is None or mod.origin is None:
        return False
    with open(mod.origin) as fh:
        source = fh.read()
    return not attr or re.search(rf"^{attr}\s*=", source, re.M) is not None


@pytest.mark.parametrize("name", APP_SERVICES)
def test_commands_point_at_existing_code(name):
    command = SERVICES[name]["command"]
    if command[0] == "celery":
        assert command[1] == "-A" and _module_attr_exists(command[2] + ":celery_app")
    elif command[0] == "gunicorn":
        assert _module_attr_exists(command[-1])
    elif command[0] == "hematovision":
        scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
        assert _module_attr_exists(scripts["hematovision"].replace(":main", ""))
        from api.cli import build_parser

        build_parser().parse_args(command[1:])
    else:
        pytest.fail(f"unknown entry point {command[0]}")


def test_dockerfile_copies_existing_paths_and_runs_the_api():
    text = (REPO / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (\S+(?: \S+)*) \S+$", text, re.M):
        for path in src.split():
            assert (REPO / path).exists(), path
    model_dir = re.search(r"HEMATOVISION_MODEL_DIR=/app/(\S+)", text).group(1)
    assert (REPO / model_dir / "manifest.json").exists()
    assert '"api.wsgi:app"' in text and _module_attr_exists("api.wsgi:app")


def test_the_published_api_refuses_to_start_without_a_token():
    """compose publishes port 5000 and gunicorn binds 0.0.0.0: api.wsgi must not serve anonymously by default."""
    from api import create_app
    from api.auth import InsecureConfiguration
    from pipeline.settings import Settings

    env = SERVICES["api"]["environment"]
    assert "0.0.0.0:5000" in " ".join(SERVICES["api"]["command"]) and "bind_host=\"0.0.0.0\"" in (REPO / "api" / "wsgi.py").read_text()
    with pytest.raises(InsecureConfiguration, match="HEMATOVISION_API_TOKEN"):
        create_app(Settings.from_env(interpolate(env)), bind_host="0.0.0.0")
    for given in ({"HEMATOVISION_API_TOKEN": "s3cret"}, {"HEMATOVISION_ALLOW_ANONYMOUS": "1"}):
        app = create_app(Settings.from_env(interpolate(env, given)), bind_host="0.0.0.0")
        app.extensions["hematovision"].db.dispose()


def test_flower_runs_behind_basic_auth(monkeypatch):
    from api.cli import main

    flower = SERVICES["flower"]
    assert flower["command"][:2] == ["hematovision", "flower"]
    assert "HEMATOVISION_FLOWER_AUTH" in flower["environment"]
    for name in ("HEMATOVISION_FLOWER_AUTH", "FLOWER_BASIC_AUTH", "HEMATOVISION_ALLOW_ANONYMOUS"):
        monkeypatch.delenv(name, raising=False)
    assert main(["flower"]) == 1  # refused without credentials (before anything is started)
