"""runtime_env on one embedded node (docs/runtime-env.md): working_dir, py_modules,
env_vars in init() and per task, excludes, the size limit, what is refused,
the node's package cache, and envs kept apart on a worker that runs them all.

Every project dir here is under tmp_path, which is not on the driver's
sys.path: the embedded node's workers can import from it only through the env.
"""
from __future__ import annotations

import os
import shutil
import sys

import pytest

import zfabric as zf
from zfabric.exceptions import TaskError

pytestmark = pytest.mark.timeout(90)


def project(root, value: str, **files) -> str:
    """A dir with helper.py (VALUE = value; whoami() returns it) and data.txt."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "helper.py"), "w") as f:
        f.write(f"VALUE = {value!r}\n\ndef whoami():\n    return VALUE\n")
    with open(os.path.join(root, "data.txt"), "w") as f:
        f.write(f"data of {value}")
    for rel, text in files.items():
        path = os.path.join(root, rel.replace("__", "/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return str(root)


def cache_dir(info) -> str:
    return os.path.join(info["session_dir"], "runtime_env")


@zf.remote
def look():
    """What a task sees of its env."""
    try:
        import helper
        value, where = helper.VALUE, helper.__file__
    except ModuleNotFoundError:
        value = where = None
    data = open("data.txt").read() if os.path.exists("data.txt") else None
    return {"value": value, "file": where, "data": data, "cwd": os.getcwd(), "pid": os.getpid(),
            "vars": {k: os.environ.get(k) for k in ("ZF_A", "ZF_B", "ZF_C")},
            "listing": sorted(os.listdir(".")),
            "env_paths": [p for p in sys.path if os.sep + "runtime_env" + os.sep in p]}


def test_working_dir_is_shipped_and_is_the_cwd(fresh, tmp_path):
    src = project(tmp_path / "proj", "A", **{"x.log": "log", "build__out.o": "o",
                                             "sub__keep.txt": "kept"})
    info = zf.init(num_cpus=2, runtime_env={"working_dir": src, "excludes": ["*.log", "build/"]})
    shutil.move(src, tmp_path / "moved")     # packed at init: the original is not read again
    out = zf.get(look.remote())
    assert out["value"] == "A" and out["data"] == "data of A"
    assert os.path.dirname(out["cwd"]) == cache_dir(info)
    assert out["file"] == os.path.join(out["cwd"], "helper.py")
    assert out["listing"] == ["data.txt", "helper.py", "sub"]   # no x.log, no build/

    nested = look.options(runtime_env={"env_vars": {"ZF_C": "nested"}})
    zf.get(nested.remote())   # (packed here: the copy the task gets packs anew)

    @zf.remote
    def parent():   # a task's tasks run in its env, merged with their own
        return zf.get([look.remote(), nested.remote()])
    inherited, merged = zf.get(parent.remote())
    assert inherited["value"] == merged["value"] == "A" and inherited["cwd"] == out["cwd"]
    assert (inherited["vars"]["ZF_C"], merged["vars"]["ZF_C"]) == (None, "nested")
    # several tasks at once on two workers: one unpacked dir, nothing half-made left
    outs = zf.get([look.remote() for _ in range(6)])
    assert {o["cwd"] for o in outs} == {out["cwd"]}
    assert os.listdir(cache_dir(info)) == [os.path.basename(out["cwd"])]


def test_py_modules_and_env_vars_per_task(fresh, tmp_path):
    pkg = tmp_path / "mods" / "zfpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .inner import NAME\n")
    (pkg / "inner.py").write_text("NAME = 'zfpkg'\n")
    (tmp_path / "mods" / "zfsingle.py").write_text("NAME = 'zfsingle'\n")
    (tmp_path / "modsrc").mkdir()
    (tmp_path / "modsrc" / "zfobj.py").write_text("NAME = 'zfobj'\n")
    sys.path.insert(0, str(tmp_path / "modsrc"))
    try:
        import zfobj     # an imported module ships as its file
    finally:
        sys.path.remove(str(tmp_path / "modsrc"))
        sys.modules.pop("zfobj", None)
    zf.init(num_cpus=1)

    @zf.remote(runtime_env={"py_modules": [str(pkg), str(tmp_path / "mods" / "zfsingle.py"),
                                           zfobj],
                            "env_vars": {"ZF_A": "a", "ZF_B": ""}})
    def use():
        import zfobj
        import zfpkg
        import zfsingle
        return (zfpkg.NAME, zfsingle.NAME, zfobj.NAME, os.environ["ZF_A"], os.environ["ZF_B"],
                os.environ["PYTHONPATH"].split(os.pathsep)[:3])

    *names, a, b, pythonpath = zf.get(use.remote())
    assert names == ["zfpkg", "zfsingle", "zfobj"] and (a, b) == ("a", "")
    assert all(os.sep + "runtime_env" + os.sep in p for p in pythonpath)
    after = zf.get(look.remote())    # the same worker, no env: nothing of it is left
    assert after["vars"] == {"ZF_A": None, "ZF_B": None, "ZF_C": None}
    assert after["env_paths"] == [] and after["value"] is None


def test_a_tasks_env_is_merged_over_the_jobs(fresh, tmp_path):
    a = project(tmp_path / "a", "A")
    b = project(tmp_path / "b", "B")
    zf.init(num_cpus=1, runtime_env={"working_dir": a, "env_vars": {"ZF_A": "job", "ZF_B": "job"}})
    job = zf.get(look.remote())
    assert job["value"] == "A" and job["vars"] == {"ZF_A": "job", "ZF_B": "job", "ZF_C": None}
    task = zf.get(look.options(runtime_env={"working_dir": b,
                                            "env_vars": {"ZF_B": "task", "ZF_C": "c"}}).remote())
    assert task["value"] == "B" and task["data"] == "data of B"
    assert task["vars"] == {"ZF_A": "job", "ZF_B": "task", "ZF_C": "c"}
    only_vars = zf.get(look.options(runtime_env={"env_vars": {"ZF_A": "x"}}).remote())
    assert only_vars["value"] == "A" and only_vars["vars"]["ZF_A"] == "x"
    assert zf.get(look.remote())["vars"]["ZF_A"] == "job"


def test_envs_stay_apart_on_one_worker(fresh, tmp_path):
    a = project(tmp_path / "a", "A")
    b = project(tmp_path / "b", "B")
    zf.init(num_cpus=1)
    env_a, env_b = {"working_dir": a}, {"working_dir": b, "env_vars": {"ZF_A": "b"}}
    plan = [env_a, env_b, None, env_a, env_a, None, env_b]
    outs = [zf.get(look.options(runtime_env=env).remote()) for env in plan]
    assert len({o["pid"] for o in outs}) == 1, "expected one worker to run them all"
    assert [o["value"] for o in outs] == ["A", "B", None, "A", "A", None, "B"]
    assert [o["vars"]["ZF_A"] for o in outs] == [None, "b", None, None, None, None, "b"]
    for o, env in zip(outs, plan):
        assert len(o["env_paths"]) == (0 if env is None else 1), o
        assert (os.path.dirname(o["cwd"]).endswith("runtime_env")) == (env is not None)
    # a function that lives in helper.py itself is pickled by reference (helper is
    # imported here): each env loads it again from its own helper.py
    sys.path.insert(0, a)
    try:
        import helper
        whoami = zf.remote(helper.whoami)
        mine = [zf.get(whoami.options(runtime_env=env).remote()) for env in (env_a, env_b, env_a)]
        assert mine == ["A", "B", "A"]
        with pytest.raises(TaskError, match="No module named 'helper'"):
            zf.get(whoami.remote())   # no env: helper cannot be imported at all
    finally:
        sys.path.remove(a)
        sys.modules.pop("helper", None)


def test_packages_are_content_addressed_and_repacked_on_change(fresh, tmp_path):
    a = project(tmp_path / "a", "same")
    twin = project(tmp_path / "twin", "same")
    info = zf.init(num_cpus=1)
    first = zf.get(look.options(runtime_env={"working_dir": a}).remote())["cwd"]
    assert zf.get(look.options(runtime_env={"working_dir": twin}).remote())["cwd"] == first
    assert zf.get(look.options(runtime_env={"working_dir": a}).remote())["cwd"] == first
    with open(os.path.join(a, "helper.py"), "a") as f:
        f.write("VALUE = 'changed'\n")
    out = zf.get(look.options(runtime_env={"working_dir": a}).remote())
    assert out["value"] == "changed" and out["cwd"] != first
    assert sorted(os.listdir(cache_dir(info))) == sorted(
        os.path.basename(p) for p in (first, out["cwd"]))


def test_size_limit(fresh, tmp_path, monkeypatch):
    monkeypatch.setenv("ZFABRIC_RUNTIME_ENV_MAX_BYTES", str(64 * 1024))
    big = project(tmp_path / "big", "big", **{"blob.bin": "x" * 100_000})
    with pytest.raises(ValueError) as e:
        zf.init(num_cpus=1, runtime_env={"working_dir": big})
    assert big in str(e.value) and "limit 64.0 KiB" in str(e.value)
    assert "more than 97." in str(e.value) and "excludes" in str(e.value)
    assert not zf.is_initialized()
    zf.init(num_cpus=1)
    with pytest.raises(ValueError, match="over the size limit"):
        look.options(runtime_env={"working_dir": big}).remote()
    out = zf.get(look.options(runtime_env={"working_dir": big, "excludes": ["*.bin"]}).remote())
    assert out["value"] == "big" and "blob.bin" not in out["listing"]


@pytest.mark.parametrize("env, match", [
    ({"pip": ["requests"]}, "'pip' is not supported: zfabric installs no packages"),
    ({"conda": {"dependencies": []}}, "'conda' is not supported"),
    ({"uv": ["x"]}, "'uv' is not supported"),
    ({"container": {"image": "x"}}, "'container' is not supported"),
    ({"working_dir": ".", "nonsense": 1}, "unknown runtime_env key 'nonsense'"),
    ("working_dir=.", "runtime_env must be a dict"),
    ({"working_dir": "/no/such/dir"}, "does not exist"),
    ({"working_dir": __file__}, "is not a directory"),
    ({"working_dir": "s3://bucket/x.zip"}, "not URIs"),
    ({"working_dir": 3}, "must be a path"),
    ({"py_modules": "."}, "py_modules must be a list"),
    ({"py_modules": ["/no/such/module"]}, "does not exist"),
    ({"py_modules": [__file__ + "c"]}, "does not exist"),
    ({"env_vars": {"A": 1}}, "must map str to str"),
    ({"env_vars": {"A=B": "1"}}, "not a valid variable"),
    ({"env_vars": ["A"]}, "env_vars must be a dict"),
    ({"excludes": "*.log"}, "excludes must be a list"),
])
def test_bad_runtime_envs_are_refused_at_once(env, match):
    with pytest.raises(ValueError, match=match):
        zf.remote(runtime_env=env)(lambda: None)
    with pytest.raises(ValueError, match=match):
        look.options(runtime_env=env)


def test_refused_in_init_before_anything_starts(fresh, tmp_path):
    (tmp_path / "x.whl").write_bytes(b"")
    with pytest.raises(ValueError, match="a wheel needs pip"):
        zf.init(num_cpus=1, runtime_env={"py_modules": [str(tmp_path / "x.whl")]})
    with pytest.raises(ValueError, match="'pip' is not supported"):
        zf.init(num_cpus=1, runtime_env={"pip": ["numpy"]})
    assert not zf.is_initialized()


def test_a_bad_package_fails_its_task_and_harms_nothing(fresh, tmp_path):
    """A descriptor whose package does not hash to its name, or whose zip would
    write outside its dir, fails that task with a clear error; the worker and
    the next tasks carry on."""
    import io
    import zipfile

    from zfabric.node import packaging
    from zfabric.node import runtime_env as renv
    info = zf.init(num_cpus=1)
    client = zf.api._client()

    def env_with(data: bytes, name: str):
        ref = client.put(data, in_store=True)
        spec = renv.check({"env_vars": {"ZF_A": "x"}})
        spec._parts[client] = {"wd": name, "pkgs": {name: ref.binary()}}
        return spec, ref

    spec, keep = env_with(b"not the package", "ab" * 32)
    with pytest.raises(TaskError, match="do not hash to its name"):
        zf.get(look.options(runtime_env=spec).remote())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../escaped.py", "X = 1\n")
    evil = buf.getvalue()
    spec, keep2 = env_with(evil, packaging.digest(evil))
    with pytest.raises(TaskError, match="leaves the package"):
        zf.get(look.options(runtime_env=spec).remote())
    assert not os.path.exists(os.path.join(info["session_dir"], "escaped.py"))
    assert os.listdir(cache_dir(info)) == []   # (no half-unpacked dir left either)
    good = project(tmp_path / "good", "good")
    assert zf.get(look.options(runtime_env={"working_dir": good}).remote())["value"] == "good"
    assert zf.get(look.remote())["vars"]["ZF_A"] is None
