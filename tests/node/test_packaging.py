"""runtime_env packages on their own (zfabric/node/packaging.py): .gitignore-style
excludes (checked against git itself), deterministic packing, the size limit,
and unpacking only what stays inside the package; and how a task's env is
merged over its job's (node/runtime_env.merge).
"""
from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zfabric.node import packaging
from zfabric.node.packaging import PackageError, Rules
from zfabric.node.runtime_env import merge
from zfabric.protocol_checks import env_problem

MiB = 1 << 20


# -- excludes ----------------------------------------------------------------------------

NAMES = ["a", "b", "ab", "x.log", "build", "c.py"]
SEGMENTS = ["a", "b", "ab", "*", "?b", "*.log", "build", "**", "a*", "[ab]"]

paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=4).map("/".join)


@st.composite
def patterns(draw):
    segs = draw(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3))
    text = "/".join(segs)
    if draw(st.booleans()) and not text.startswith("**"):
        text = "/" + text
    if draw(st.integers(0, 3)) == 0:
        text += "/"
    if draw(st.integers(0, 4)) == 0:
        text = "!" + text
    return text


def _make_tree(root: str, files: list[str]) -> set[tuple[str, bool]]:
    """Files at `files` (a path that is also another's parent becomes a dir);
    returns every (path, is_dir) made."""
    made = set()
    dirs = {"/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)}
    for d in sorted(dirs):
        os.makedirs(os.path.join(root, d), exist_ok=True)
        made.add((d, True))
    for f in files:
        if f not in dirs:
            with open(os.path.join(root, f), "w") as fh:
                fh.write(f)
            made.add((f, False))
    return made


def _git_ignored(root: str, lines: list[str], paths: list[str]) -> set[str]:
    with open(os.path.join(root, ".gitignore"), "w") as f:
        f.write("\n".join(lines) + "\n")
    p = subprocess.run(["git", "-C", root, "check-ignore", "--no-index", "--stdin"],
                       input="\n".join(paths) + "\n", capture_output=True, text=True)
    assert p.returncode in (0, 1), p.stderr
    return set(p.stdout.split())


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git as the oracle")
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(paths, min_size=1, max_size=8, unique=True),
       lines=st.lists(patterns(), min_size=1, max_size=4))
def test_excludes_agree_with_git(tmp_path_factory, files, lines):
    root = str(tmp_path_factory.mktemp("gi"))
    subprocess.run(["git", "init", "-q", root], check=True)
    made = _make_tree(root, files)
    ignored = _git_ignored(root, lines, [p for p, _ in sorted(made)])
    rules = Rules(lines, defaults=False)
    ours = {p for p, is_dir in made if rules.excluded(p, is_dir)}
    assert ours == ignored, (lines, sorted(made))


@pytest.mark.parametrize("pattern, excluded, kept", [
    ("*.log", ["x.log", "a/b/x.log"], ["x.log.txt", "a/logs"]),
    ("build/", ["build", "a/build", "build/x.py"], []),
    ("/top", ["top", "top/inner"], ["a/top"]),
    ("**/x", ["x", "a/x", "a/b/x"], ["xa", "a/xb"]),
    ("a/**", ["a/b", "a/b/c"], ["b/a"]),
    ("a/**/z", ["a/z", "a/b/z", "a/b/c/z"], ["b/a/z"]),
])
def test_common_forms(pattern, excluded, kept):
    rules = Rules([pattern], defaults=False)
    for p in excluded:
        assert rules.excluded(p, p in ("build", "a/build", "top")), (pattern, p)
    for p in kept:
        assert not rules.excluded(p, False), (pattern, p)
    assert not Rules(["build/"], defaults=False).excluded("build", False)   # a file: kept


def test_negation_comments_and_defaults():
    rules = Rules(["*.log", "!keep.log", "# a comment", "", "skip/", "!skip/x"])
    assert rules.excluded("a.log", False) and not rules.excluded("keep.log", False)
    assert rules.excluded("skip/x", False)   # as in git: not below an excluded dir
    assert rules.excluded("__pycache__", True) and rules.excluded("a/__pycache__/m.pyc", False)
    assert rules.excluded(".git", True) and rules.excluded(".git", False)
    assert not Rules([], defaults=False).excluded("__pycache__", True)


# -- packing ----------------------------------------------------------------------------------

def _tree(root, files: dict):
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def _pack(root, excludes=(), limit=100 * MiB, prefix=""):
    entries = packaging.scan(str(root), Rules(excludes), limit, "working_dir", prefix)
    return packaging.pack(entries, limit)


FILES = {"m.py": b"X = 1\n", "pkg/__init__.py": b"", "pkg/data/d.bin": bytes(range(256)) * 10,
         "empty/.keep": b""}


def test_equal_content_gives_equal_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _tree(a, FILES)
    _tree(b, dict(reversed(FILES.items())))     # another order, other times
    os.utime(b / "m.py", (1, 1))
    os.chmod(b / "pkg" / "__init__.py", 0o600)    # group/other bits do not count
    assert _pack(a) == _pack(b)
    assert packaging.digest(_pack(a)) == packaging.digest(_pack(b))
    (b / "m.py").write_bytes(b"X = 2\n")
    assert _pack(a) != _pack(b)
    (b / "m.py").write_bytes(b"X = 1\n")
    os.chmod(b / "m.py", 0o755)                   # the owner's exec bit does
    assert _pack(a) != _pack(b)


def test_excludes_and_defaults_leave_files_out(tmp_path):
    _tree(tmp_path, {**FILES, "x.log": b"log", "build/out.o": b"o", "__pycache__/m.pyc": b"c",
                     ".git/HEAD": b"ref", "a/__pycache__/n.pyc": b"c", "a/keep.py": b""})
    names = zipfile.ZipFile(io.BytesIO(_pack(tmp_path, ["*.log", "build/"]))).namelist()
    assert "x.log" not in names and not any(n.startswith(("build", ".git", "__pycache__"))
                                            for n in names)
    assert "a/keep.py" in names and "a/__pycache__/" not in names and "m.py" in names


def test_py_module_prefix_and_single_file(tmp_path):
    _tree(tmp_path, FILES)
    names = zipfile.ZipFile(io.BytesIO(_pack(tmp_path / "pkg", prefix="pkg/"))).namelist()
    assert names == ["pkg/", "pkg/__init__.py", "pkg/data/", "pkg/data/d.bin"]
    one = packaging.scan(str(tmp_path / "m.py"), Rules(), MiB, "py_modules entry")
    assert [e.rel for e in one] == ["m.py"]


def test_size_limit_names_the_path_and_size(tmp_path):
    _tree(tmp_path, {"big.bin": b"\0" * (3 * MiB), "small": b"x"})
    with pytest.raises(PackageError) as e:
        _pack(tmp_path, limit=2 * MiB)
    assert str(tmp_path) in str(e.value) and "3.0 MiB" in str(e.value)
    assert "2.0 MiB" in str(e.value) and "excludes" in str(e.value)
    _pack(tmp_path, ["*.bin"], limit=2 * MiB)   # left out: fine


def test_symlinks_are_followed_once(tmp_path):
    _tree(tmp_path / "real", {"f.py": b"F = 1\n"})
    (tmp_path / "real" / "loop").symlink_to(tmp_path / "real")      # a cycle
    (tmp_path / "real" / "link.py").symlink_to(tmp_path / "real" / "f.py")
    (tmp_path / "real" / "dangling").symlink_to(tmp_path / "nowhere")
    names = zipfile.ZipFile(io.BytesIO(_pack(tmp_path / "real"))).namelist()
    assert sorted(names) == ["f.py", "link.py"]


# -- unpacking --------------------------------------------------------------------------------

def test_round_trip(tmp_path):
    _tree(tmp_path / "src", FILES)
    os.chmod(tmp_path / "src" / "m.py", 0o755)
    packaging.unpack(_pack(tmp_path / "src"), str(tmp_path / "out"), 100 * MiB)
    for rel, data in FILES.items():
        assert (tmp_path / "out" / rel).read_bytes() == data
    assert os.stat(tmp_path / "out" / "m.py").st_mode & stat.S_IXUSR
    assert not os.stat(tmp_path / "out" / "pkg" / "__init__.py").st_mode & stat.S_IXUSR


def _zip(members) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return buf.getvalue()


@pytest.mark.parametrize("members, why", [
    ([("../evil.py", b"x", 0o100644)], "leaves the package"),
    ([("/abs/evil.py", b"x", 0o100644)], "relative"),
    ([("a/../../evil", b"x", 0o100644)], "leaves the package"),
    ([("link", b"/etc/passwd", stat.S_IFLNK | 0o777)], "regular file"),
    ([("a\\..\\evil", b"x", 0o100644)], "relative"),
    ([("big", b"\0" * 2048, 0o100644)], "more than"),
])
def test_unsafe_packages_are_refused(tmp_path, members, why):
    dest = tmp_path / "out"
    with pytest.raises(PackageError, match=why):
        packaging.unpack(_zip(members), str(dest), 1024)
    assert not dest.exists() and not (tmp_path / "evil.py").exists()


def test_not_a_zip(tmp_path):
    with pytest.raises(PackageError, match="not a readable zip"):
        packaging.unpack(b"PK\x03\x04 nonsense", str(tmp_path / "out"), MiB)


# -- merging a task's env over its job's -----------------------------------------------------

SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64
OID_A, OID_B, OID_C = b"\x01" * 20, b"\x02" * 20, b"\x03" * 20


def test_merge_task_keys_replace_env_vars_merge():
    job = {"wd": SHA_A, "vars": {"X": "job", "Y": "job"}, "pkgs": {SHA_A: OID_A}}
    task = {"wd": SHA_B, "vars": {"Y": "task"}, "pkgs": {SHA_B: OID_B}}
    assert merge(job, task) == {"wd": SHA_B, "vars": {"X": "job", "Y": "task"},
                                "pkgs": {SHA_B: OID_B}}
    assert merge(job, {"mods": [SHA_C], "pkgs": {SHA_C: OID_C}}) == {
        "wd": SHA_A, "mods": [SHA_C], "vars": job["vars"], "pkgs": {SHA_A: OID_A, SHA_C: OID_C}}
    assert merge(job, {"mods": [], "pkgs": {}}) == {**job, "mods": []}
    assert merge(None, task) == task and merge(job, None) == job and merge(None, None) == {}
    for desc in (merge(job, task), merge(job, {"mods": [SHA_C], "pkgs": {SHA_C: OID_C}})):
        assert env_problem(desc) == ""
