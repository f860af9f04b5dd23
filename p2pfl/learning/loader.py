"""Load user tasks named ``module:function`` (``--task module:function``).

A *task factory* is any callable returning a :class:`~p2pfl.learning.Task`. It is
called with keyword arguments only, and only with those its signature accepts (all
of them if it takes ``**kwargs``), so each of these works::

    def make_task() -> Task: ...                          # a node operator's own data
    def make_task(peer_index, n_peers, seed) -> Task: ... # a simulation shard
    def make_task(**context) -> Task: ...

The context a caller may pass: ``peer_index``, ``n_peers``, ``seed``, ``partition``
(the ``--partition`` string), ``device``. A required parameter the caller does not
supply is a :class:`~p2pfl.errors.ConfigError`. The built-in task is
``p2pfl.learning.digits:digits_task``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from p2pfl.errors import ConfigError

from .task import Task

__all__ = ["TaskFactory", "call_task_factory", "load_task_factory"]

TaskFactory = Callable[..., Task]

_SPEC_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def load_task_factory(spec: str, *, path: str | os.PathLike[str] | None = None) -> TaskFactory:
    """Import ``'package.module:function'`` (the attribute may be dotted, e.g.
    ``'mod:Class.create'``) and return the callable.

    ``path``, when given, is put first on ``sys.path`` (if not there yet) before the
    import; the CLI passes the current directory so that ``--task mytask:make``
    finds ``./mytask.py``. Raises :class:`~p2pfl.errors.ConfigError` when the spec
    is malformed, the module cannot be imported, the attribute is missing, or it is
    not callable; the original exception is chained.
    """
    if not isinstance(spec, str) or not _SPEC_RE.match(spec.strip()):
        raise ConfigError(
            f"task {spec!r} is not of the form 'module:function' (e.g. 'mytasks:make_task')"
        )
    module_name, _, attr_path = spec.strip().partition(":")
    if path is not None:
        entry = os.fspath(path)
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name + ".").startswith(e.name + "."):
            raise ConfigError(
                f"task {spec!r}: no module named {e.name!r} (is it on PYTHONPATH?)"
            ) from e
        raise ConfigError(f"task {spec!r}: importing {module_name!r} failed: {e}") from e
    except Exception as e:
        raise ConfigError(
            f"task {spec!r}: importing {module_name!r} failed: {type(e).__name__}: {e}"
        ) from e
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise ConfigError(
                f"task {spec!r}: {type(obj).__name__} {getattr(obj, '__name__', obj)!r} "
                f"has no attribute {part!r}"
            ) from e
    if not callable(obj):
        raise ConfigError(f"task {spec!r}: {attr_path!r} is a {type(obj).__name__}, not callable")
    factory: TaskFactory = obj
    return factory


def call_task_factory(factory: TaskFactory, **context: Any) -> Task:
    """Call ``factory`` with the subset of ``context`` its signature accepts and check
    that it returned a :class:`Task`.

    Raises :class:`~p2pfl.errors.ConfigError` when the factory requires a parameter
    not in ``context``, or returns something that lacks the ``Task`` members.
    Exceptions raised inside the factory propagate unchanged.
    """
    name = getattr(factory, "__qualname__", repr(factory))
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: pass everything
        kwargs = dict(context)
    else:
        params = sig.parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            kwargs = dict(context)
        else:
            accepted = {
                p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            }
            kwargs = {k: v for k, v in context.items() if k in accepted}
        try:
            sig.bind(**kwargs)
        except TypeError as e:
            raise ConfigError(
                f"task factory {name} cannot be called with {sorted(kwargs)}: {e}; "
                f"available arguments are {sorted(context)}"
            ) from e
    task = factory(**kwargs)
    if not isinstance(task, Task):
        missing = [
            m
            for m in ("train_data", "val_data", "num_samples", "model_factory", "train", "evaluate")
            if not hasattr(task, m)
        ]
        raise ConfigError(
            f"task factory {name} returned a {type(task).__name__}, not a Task "
            f"(missing {', '.join(missing)})"
        )
    return task
