"""`@struct`: the record classes of the wire and the core, declared like dataclasses.

    @struct(frozen=True)
    class WorkerExited:
        worker_id: str
        exitcode: int | None
        spare: bool = False                  # a default
        opts: dict = field(default_factory=dict)   # (dataclasses.field)

makes a class with `__slots__` for the annotated fields, an `__init__` taking
them in order (defaults last), `__eq__` (same class, equal fields), `__repr__`
as a dataclass's ("WorkerExited(worker_id='w1', exitcode=0, ...)"),
`__match_args__`, `_fields` (the names, in order) and pickling; `replace(obj,
**changes)` is a copy with some fields changed (as `dataclasses.replace`); `frozen=True`
adds `__hash__` and refuses assignment (`dataclasses.FrozenInstanceError`).

Why not `dataclasses.dataclass(slots=True)`: it spends about half a
millisecond per class (it compiles five methods one by one, then makes the
class a second time for the slots), and the messages (protocol.py), events
and effects (core/) are ~80 classes that every driver, node and worker
imports. Here the class is made once, only `__init__` is compiled (one small
function each), and equality, hashing, repr and pickling are shared functions
reading the fields through one `operator.attrgetter`. Instances behave the
same; `__init__` does the same work per field, so building one costs what it
did.
"""
from __future__ import annotations

import dataclasses
from operator import attrgetter

_MISSING = object()
_object_setattr = object.__setattr__


def struct(cls=None, /, *, frozen: bool = False):
    """Class decorator (bare, or with frozen=...): see the module docstring."""
    def wrap(c):
        return _make(c, frozen)
    return wrap if cls is None else wrap(cls)


def _make(cls, frozen: bool) -> type:
    names = tuple(cls.__dict__.get("__annotations__", {}))
    ns = {k: v for k, v in cls.__dict__.items()
          if k not in names and k not in ("__dict__", "__weakref__")}
    defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
    ns.update(__slots__=names, __match_args__=names, _fields=names,
              _values=staticmethod(_values_getter(names)), __eq__=_eq, __repr__=_repr,
              __reduce__=_reduce)
    if frozen:
        ns.update(__hash__=_hash, __setattr__=_refuse_set, __delattr__=_refuse_del)
    else:
        ns["__hash__"] = None   # (mutable and equal by value: unhashable, as a dataclass)
    new = type(cls)(cls.__name__, cls.__bases__, ns)
    new.__qualname__ = cls.__qualname__
    new.__init__ = _init(new, names, defaults, frozen)
    return new


def _values_getter(names: tuple):
    """self -> the tuple of its field values."""
    if not names:
        return lambda self: ()
    if len(names) == 1:
        get = attrgetter(names[0])
        return lambda self: (get(self),)
    return attrgetter(*names)


def _init(cls, names: tuple, defaults: dict, frozen: bool):
    params, body, env = [], [], {"_MISSING": _MISSING, "_set": _object_setattr}
    for name in names:
        value = defaults.get(name, _MISSING)
        if isinstance(value, dataclasses.Field):
            if value.default_factory is not dataclasses.MISSING:
                env[f"_f_{name}"] = value.default_factory
                params.append(f"{name}=_MISSING")
                value = f"_f_{name}() if {name} is _MISSING else {name}"
            else:
                env[f"_d_{name}"] = value.default
                params.append(f"{name}=_d_{name}")
                value = name
        elif value is not _MISSING:
            env[f"_d_{name}"] = value
            params.append(f"{name}=_d_{name}")
            value = name
        else:
            if params and "=" in params[-1]:
                raise TypeError(f"{cls.__name__}: field {name!r} without a default "
                                "follows one with a default")
            params.append(name)
            value = name
        body.append(f"_set(self, {name!r}, {value})" if frozen else f"self.{name} = {value}")
    src = (f"def __init__(self, {', '.join(params)}):\n    "
           + ("\n    ".join(body) or "pass") + "\n")
    exec(src, env)   # (the one compile per class; the names are identifiers from the class body)
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def replace(obj, **changes):
    """A copy of struct `obj` with `changes` (field name -> value); TypeError for a
    name that is not one of its fields."""
    cls = type(obj)
    unknown = set(changes) - set(cls._fields)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    return cls(**{**dict(zip(cls._fields, cls._values(obj))), **changes})


def _eq(self, other):
    if other.__class__ is self.__class__:
        return self._values(self) == other._values(other)
    return NotImplemented


def _hash(self):
    return hash(self._values(self))


def _repr(self) -> str:
    fields = ", ".join(f"{n}={v!r}" for n, v in zip(self._fields, self._values(self)))
    return f"{type(self).__qualname__}({fields})"


def _reduce(self):
    return type(self), self._values(self)


def _refuse_set(self, name, value):
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _refuse_del(self, name):
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
