"""Ray's `init` keyword arguments after `import zfabric as ray`: logging_level,
logging_format, configure_logging and namespace have their meaning; Ray's
arguments without one here are accepted with one NoEffectWarning each; any
other is a TypeError (zfabric/compat.py)."""
from __future__ import annotations

import logging
import warnings

import pytest

import zfabric as ray
from zfabric import compat

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def no_warnings_yet(monkeypatch):
    monkeypatch.setattr(compat, "_warned", set())


def caught(call):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        call()
    return [w for w in seen if issubclass(w.category, compat.NoEffectWarning)]


def test_rays_arguments_without_meaning_warn_once_each(cluster, no_warnings_yet):
    seen = caught(lambda: ray.init(ignore_reinit_error=True, local_mode=True,
                                   _system_config={"max_io_workers": 4}))
    assert sorted(str(w.message).split("(")[1].split("=")[0] for w in seen) == [
        "_system_config", "local_mode"]
    assert all(w.filename == __file__ for w in seen)   # points at the caller's init()
    assert "ZFABRIC_" in next(str(w.message) for w in seen if "_system_config" in str(w.message))
    assert caught(lambda: ray.init(ignore_reinit_error=True, local_mode=True,
                                   _system_config={"max_io_workers": 4})) == []


def test_rays_defaults_say_nothing(cluster, no_warnings_yet):
    assert caught(lambda: ray.init(ignore_reinit_error=True, local_mode=False, job_config=None,
                                   _system_config=None, allow_multiple=False)) == []


def test_an_argument_neither_ray_nor_zfabric_has_is_a_type_error(cluster):
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_cpu'"):
        ray.init(ignore_reinit_error=True, num_cpu=2)
    assert ray.is_initialized() and ray.nodes()[0]["NodeID"] == cluster["node_id"]


def test_every_argument_in_the_table_is_accepted(cluster, no_warnings_yet):
    marker = object()   # no Ray default is this: every argument warns
    kwargs = {name: marker for name in compat.RAY_INIT_WITHOUT_MEANING}
    seen = caught(lambda: ray.init(ignore_reinit_error=True, **kwargs))
    assert len(seen) == len(kwargs)


def test_logging_level_sets_the_zfabric_logger(cluster):
    logger = logging.getLogger("zfabric")
    ray.init(ignore_reinit_error=True, logging_level=logging.ERROR)
    assert logger.level == logging.ERROR
    ray.init(ignore_reinit_error=True, logging_level="debug")   # Ray takes names too
    assert logger.level == logging.DEBUG
    for bad in ("loud", -1, True, 1.5):
        with pytest.raises(ValueError, match="logging_level"):
            ray.init(ignore_reinit_error=True, logging_level=bad)
    ray.init(ignore_reinit_error=True, logging_level=logging.INFO)


def test_zfabric_prints_its_records_until_the_application_logs(cluster, monkeypatch, capsys):
    ray.init(ignore_reinit_error=True, logging_level=logging.INFO,
             logging_format="%(levelname)s|%(name)s|%(message)s")
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])     # an application that configured nothing
    logging.getLogger("zfabric.compat_test").info("hello from zfabric")
    assert "INFO|zfabric.compat_test|hello from zfabric" in capsys.readouterr().err
    monkeypatch.setattr(root, "handlers", [logging.NullHandler()])   # one that did
    logging.getLogger("zfabric.compat_test").warning("shown by the application's handlers")
    assert "shown by" not in capsys.readouterr().err
    ray.init(ignore_reinit_error=True)   # the default format again


def test_configure_logging_false_leaves_logging_alone(cluster):
    logger = logging.getLogger("zfabric")
    ray.init(ignore_reinit_error=True, logging_level=logging.WARNING)
    assert any(isinstance(h, compat._DriverHandler) for h in logger.handlers)
    ray.init(ignore_reinit_error=True, configure_logging=False, logging_level=logging.DEBUG)
    assert not any(isinstance(h, compat._DriverHandler) for h in logger.handlers)
    assert logger.level != logging.DEBUG
    ray.init(ignore_reinit_error=True)


def test_namespace_is_kept_and_shutdown_restores_logging(fresh, no_warnings_yet):
    logger = logging.getLogger("zfabric")
    level_before = logger.level
    with pytest.raises(TypeError, match="namespace"):
        ray.init(namespace=5)
    with pytest.warns(compat.NoEffectWarning, match="namespace"):
        info = ray.init(num_cpus=1, namespace="team-a", logging_level=logging.DEBUG)
    assert info["namespace"] == "team-a"
    assert ray.get_runtime_context().namespace == "team-a"
    assert ray.get_runtime_context().get_namespace() == "team-a"

    @ray.remote
    def inside():
        return ray.get_runtime_context().namespace

    assert ray.get(inside.remote()) is None   # it does not travel with tasks
    assert logger.level == logging.DEBUG
    ray.shutdown()
    assert logger.level == level_before
    assert not any(isinstance(h, compat._DriverHandler) for h in logger.handlers)


def test_init_returns_a_dict_that_reads_as_rays_context(cluster):
    context = ray.init(ignore_reinit_error=True)
    assert isinstance(context, dict) and context["node_id"] == cluster["node_id"]
    assert context.node_id == cluster["node_id"]
    assert context.address_info["session_dir"] == context.session_dir
    assert "dashboard_url" in context and context.dashboard_url == context["dashboard_url"]
    with pytest.raises(AttributeError):
        context.no_such_key


def test_rays_task_options_without_meaning_warn_once_each(cluster, no_warnings_yet):
    def defined():
        @ray.remote(max_calls=1, memory=2**30)
        def f(x):
            return x
        return f

    seen = caught(defined)
    assert sorted(str(w.message).split("(")[1].split("=")[0] for w in seen) == [
        "max_calls", "memory"]
    assert all(w.filename == __file__ for w in seen)
    f = defined()
    assert caught(lambda: f.options(max_calls=1, num_cpus=0.5)) == []   # once each
    assert caught(lambda: f.options(accelerator_type="A100", enable_task_events=True)) != []
    assert caught(lambda: f.options(max_calls=0, _metadata=None)) == []   # Ray's defaults
    assert ray.get(f.options(max_calls=1).remote(3)) == 3
    with pytest.raises(ValueError, match="unknown option"):
        f.options(max_call=1)


def test_the_page_on_moving_from_ray_names_every_argument_without_meaning():
    from tests.harness.source import package_root
    page = (package_root().parent / "docs" / "from-ray.md").read_text()
    missing = [name for table in (compat.RAY_INIT_WITHOUT_MEANING,
                                  compat.RAY_TASK_OPTIONS_WITHOUT_MEANING)
               for name in table if f"`{name}`" not in page]
    assert not missing, f"docs/from-ray.md does not name {missing}"
