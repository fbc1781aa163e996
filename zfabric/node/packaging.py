"""The runtime_env package format: a directory or module as one deterministic zip.

    driver: scan(root, rules, limit) -> entries -> pack(entries) -> zip bytes, sha256
    node:   the zip bytes (an object in the store) -> unpack(data, dest, limit)

A package is named by the sha256 of its zip (`digest`): `pack` writes the
entries sorted by path, with a fixed timestamp (1980-01-01) and fixed modes
(0644, or 0755 for a file its owner may execute; 0755 dirs), so equal
content gives equal bytes and an equal name, wherever and whenever it is
packed. Symlinks are followed when packing (a link to a file packs the
file); a linked directory already being walked is not walked again.

Excludes are `.gitignore` lines (`Rules`): `*.log`, `build/` (directories
only), `/top-only` (anchored at the package root), `a/b` (a slash inside:
anchored), `**/x`, `x/**`, `a/**/b`, `!keep.log` (re-include; as in git, not
below an excluded directory), blank lines and `#` comments. Segments use
fnmatch's syntax (`*`, `?`, `[...]`, `[!...]`), never crossing a `/`; each
line compiles to one regex of the whole path (tests/node/test_packaging.py
checks the verdicts against `git check-ignore`). `__pycache__` and `.git` are
always excluded (DEFAULT_EXCLUDES).

`unpack` trusts nothing in the zip: every member must be a plain relative
path (no absolute path, no `..`, no backslash, no NUL), a regular file or a
directory (no symlink), and the sum of the sizes it declares and writes
stays within `limit`. It writes only with its own code (never
`ZipFile.extractall`). This module does no I/O beyond the files it is told
to read or write; the driver side (zfabric/runtime_env.py) and the worker
side (node/runtime_env.py) call it.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import zipfile
from dataclasses import dataclass

DEFAULT_EXCLUDES = ("__pycache__/", ".git")
ZIP_TIME = (1980, 1, 1, 0, 0, 0)    # the earliest time a zip can hold
FILE_MODE, EXEC_MODE, DIR_MODE = 0o644, 0o755, 0o755
# Members are stored, not deflated: packing then costs what reading the files
# costs (30 MiB of code and data: 0.65 s stored, 5.2 s at deflate level 1 on a
# busy 2-core machine), and a package's name depends on its content alone, not
# on the zlib version of the machine that packed it.
COMPRESSION = zipfile.ZIP_STORED
MAX_MEMBERS = 1 << 20               # members of one package (unpack refuses more)
COPY_CHUNK = 1 << 20


class PackageError(ValueError):
    """A package that cannot be made (too large, unreadable) or that is unsafe to unpack."""


# -- excludes --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Rule:
    negate: bool
    dir_only: bool
    regex: re.Pattern   # the whole /-separated path, anchored at the root


def _rule(line: str) -> _Rule | None:
    """One .gitignore line as a rule (None: blank or a comment)."""
    line = line.rstrip()
    if not line or line.startswith("#"):
        return None
    negate = line.startswith("!")
    if negate:
        line = line[1:]
    dir_only = line.endswith("/")
    line = line.rstrip("/")
    if not line:
        return None
    anchored = "/" in line          # a leading or middle slash anchors at the root
    segments = [s for s in line.split("/") if s]
    if not anchored and segments != ["**"]:
        segments.insert(0, "**")
    return _Rule(negate, dir_only, re.compile(_path_regex(segments)))


def _path_regex(segments: list[str]) -> str:
    """The regex of a path of segments: "**" is any number of whole segments
    (at the end: at least one, "x/**" being what is inside x)."""
    out = ""
    for i, seg in enumerate(segments):
        sep = "" if i == 0 or segments[i - 1] == "**" else "/"   # ("**" ends with its /)
        if seg != "**":
            out += sep + _segment_regex(seg)
        elif i == len(segments) - 1:
            out += sep + ".+"
        else:
            out += sep + "(?:[^/]+/)*"
    return out + r"\Z"


def _segment_regex(seg: str) -> str:
    """fnmatch's syntax for one segment (`*`, `?`, `[...]`, `[!...]`), never crossing a /."""
    out, i, n = [], 0, len(seg)
    while i < n:
        c = seg[i]
        i += 1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + (i < n and seg[i] in "!^")
            j += j < n and seg[j] == "]"
            while j < n and seg[j] != "]":
                j += 1
            if j >= n:                       # no closing bracket: a plain "["
                out.append(re.escape(c))
                continue
            body, i = seg[i:j], j + 1
            negate = body[:1] in ("!", "^")
            body = re.sub(r"([\\\]^])", r"\\\1", body[negate:])
            out.append(f"[{'^/' if negate else ''}{body}]")
        else:
            out.append(re.escape(c))
    return "".join(out)


class Rules:
    """A list of .gitignore lines, compiled; `DEFAULT_EXCLUDES` come first."""

    def __init__(self, patterns=(), defaults: bool = True):
        lines = list(DEFAULT_EXCLUDES if defaults else ()) + list(patterns)
        self.rules = [r for r in map(_rule, lines) if r is not None]

    def matches(self, rel: str, is_dir: bool) -> bool:
        """Does the path itself match (last matching line wins), its parents aside?"""
        verdict = False
        for r in self.rules:
            if (is_dir or not r.dir_only) and r.regex.match(rel):
                verdict = not r.negate
        return verdict

    def excluded(self, rel: str, is_dir: bool) -> bool:
        """Is `rel` (a /-separated path under the root) left out of the package:
        it matches, or a directory above it does (git cannot re-include below an
        excluded directory, nor can we)?"""
        parts = rel.split("/")
        for i in range(1, len(parts)):
            if self.matches("/".join(parts[:i]), True):
                return True
        return self.matches(rel, is_dir)


# -- packing ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    rel: str        # the member name: /-separated, relative (a dir's without the slash)
    path: str       # where it is read from
    is_dir: bool
    size: int
    mtime_ns: int
    executable: bool


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def scan(root: str, rules: Rules, limit: int, label: str, prefix: str = "") -> list[Entry]:
    """The entries of a package made from `root` (a directory or a file), member
    names starting with `prefix`; PackageError (naming `label`, the path and the
    size) once the files pass `limit` bytes."""
    entries: list[Entry] = []
    total = 0

    def add(rel: str, path: str, st: os.stat_result, is_dir: bool) -> None:
        nonlocal total
        total += 0 if is_dir else st.st_size
        if total > limit:
            raise PackageError(
                f"runtime_env {label} {root!r} is over the size limit: more than "
                f"{_human(total)} of files (limit {_human(limit)}, "
                f"ZFABRIC_RUNTIME_ENV_MAX_BYTES); leave files out with 'excludes'")
        entries.append(Entry(rel, path, is_dir, 0 if is_dir else st.st_size,
                             0 if is_dir else st.st_mtime_ns, bool(st.st_mode & stat.S_IXUSR)))

    if not os.path.isdir(root):
        add(prefix + os.path.basename(root), root, os.stat(root), False)
        return entries
    if prefix:
        add(prefix.rstrip("/"), root, os.stat(root), True)
    seen = {os.path.realpath(root)}
    for top, dirs, files in os.walk(root, followlinks=True, onerror=_raise):
        base = os.path.relpath(top, root).replace(os.sep, "/")
        base = "" if base == "." else base + "/"
        kept = []
        for name in sorted(dirs):   # (below excluded dirs nothing is walked: `matches`)
            real = os.path.realpath(os.path.join(top, name))
            if rules.matches(base + name, True) or real in seen:
                continue
            seen.add(real)
            kept.append(name)
            add(prefix + base + name, os.path.join(top, name), os.stat(real), True)
        dirs[:] = kept
        for name in sorted(files):
            path = os.path.join(top, name)
            if rules.matches(base + name, False):
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:   # a dangling symlink: nothing to ship
                continue
            if stat.S_ISREG(st.st_mode):   # (sockets, fifos, devices: not content)
                add(prefix + base + name, path, st, False)
    return entries


def _raise(error: OSError) -> None:
    raise error


def signature(entries: list[Entry]) -> tuple:
    """What `scan` saw, to tell whether a package made earlier is still current."""
    return tuple((e.rel, e.size, e.mtime_ns, e.executable) for e in entries)


def pack(entries: list[Entry], limit: int, label: str = "package") -> bytes:
    """The deterministic zip of `entries` (PackageError if it passes `limit`)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", COMPRESSION) as zf:
        for e in sorted(entries, key=lambda e: e.rel):
            info = zipfile.ZipInfo(e.rel + ("/" if e.is_dir else ""), date_time=ZIP_TIME)
            info.create_system = 3
            if e.is_dir:
                info.external_attr = ((stat.S_IFDIR | DIR_MODE) << 16) | 0x10
                zf.writestr(info, b"")
                continue
            mode = EXEC_MODE if e.executable else FILE_MODE
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = COMPRESSION
            with open(e.path, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                while chunk := src.read(COPY_CHUNK):
                    dst.write(chunk)
            if buf.tell() > limit:
                raise PackageError(f"runtime_env {label} is over the size limit "
                                   f"({_human(limit)}) once packed")
    return buf.getvalue()


def digest(data) -> str:
    return hashlib.sha256(data).hexdigest()


# -- unpacking --------------------------------------------------------------------------

def member_problem(info: zipfile.ZipInfo) -> str:
    """Why a zip member must not be unpacked ("" when it may)."""
    name = info.filename
    if not name or name.startswith("/") or "\\" in name or "\0" in name or ":" in name[:2]:
        return f"member {name!r} is not a relative path"
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        return f"member {name!r} leaves the package or has empty parts"
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return f"member {name!r} is not a regular file or a directory"
    return ""


def unpack(data, dest: str, limit: int) -> None:
    """Unpack a package into the new directory `dest` (it must not exist yet)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        members = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise PackageError(f"the package is not a readable zip: {e}") from None
    if len(members) > MAX_MEMBERS or sum(m.file_size for m in members) > limit:
        raise PackageError(f"the package holds more than {_human(limit)} or "
                           f"{MAX_MEMBERS} members")
    for m in members:
        problem = member_problem(m)
        if problem:
            raise PackageError(f"unsafe package: {problem}")
    os.mkdir(dest, DIR_MODE)
    written = 0
    with zf:
        for m in members:
            target = os.path.join(dest, *m.filename.rstrip("/").split("/"))
            if m.is_dir():
                os.makedirs(target, DIR_MODE, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), DIR_MODE, exist_ok=True)
            mode = EXEC_MODE if (m.external_attr >> 16) & stat.S_IXUSR else FILE_MODE
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            with os.fdopen(fd, "wb") as dst, zf.open(m) as src:
                while chunk := src.read(COPY_CHUNK):
                    written += len(chunk)
                    if written > limit:
                        raise PackageError(f"the package unpacks to more than {_human(limit)}")
                    dst.write(chunk)
