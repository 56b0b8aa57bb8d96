import pytest

from pipeline.settings import Settings, celery_config


def test_defaults_are_the_embedded_setup(tmp_path):
    s = Settings.from_env({}, var_dir=str(tmp_path))
    assert s.resolved_database_url.startswith("sqlite:///") and s.resolved_database_url.endswith("hematovision.sqlite")
    assert s.resolved_broker_url.startswith("sqla+sqlite:///")
    assert s.backend == "litert" and s.batch_size == 64


def test_environment_overrides_with_types():
    s = Settings.from_env({"HEMATOVISION_BATCH_SIZE": "16", "HEMATOVISION_LOW_CONFIDENCE": "0.7",
                           "HEMATOVISION_BROKER_URL": "redis://h:6379/0", "HEMATOVISION_BACKEND": "keras"})
    assert (s.batch_size, s.low_confidence, s.backend) == (16, 0.7, "keras")
    conf = celery_config(s)
    assert conf["broker_url"] == "redis://h:6379/0"
    assert conf["task_acks_late"] is True and conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] > s.task_time_limit


BAD_VALUES = [("BATCH_SIZE", "many"), ("BATCH_SIZE", "0"), ("BATCH_SIZE", "4096"), ("BACKEND", "onnx"), ("LOW_CONFIDENCE", "2"),
              ("TASK_TIME_LIMIT", "3"), ("TASK_TIME_LIMIT", "999999"), ("LEASE_SECONDS", "0"), ("MAX_DELIVERIES", "0"),
              ("REAPER_INTERVAL", "3600")]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_values_fail_with_the_variable_name(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env({"HEMATOVISION_" + name: value})


def test_tta_is_a_three_way_setting():
    assert Settings().tta == 2  # from 2.4.3: the 8 views where one view is unsure (rule G)
    assert Settings.from_env({"HEMATOVISION_TTA": "1"}).tta == 1
    assert Settings.from_env({"HEMATOVISION_TTA": "2"}).tta == 2  # the 8 views only where one view is unsure
    with pytest.raises(ValueError, match="TTA"):
        Settings.from_env({"HEMATOVISION_TTA": "3"})
    with pytest.raises(ValueError, match="TTA"):
        Settings.from_env({"HEMATOVISION_TTA": "8"})
