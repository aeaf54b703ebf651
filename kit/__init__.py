"""Isolation Kit: see, measure and explain containers versus virtual machines.

>>> import kit
>>> kit.run("busybox", ["echo", "hello"], runtime="runc").stdout
'hello\\n'
>>> with kit.start("busybox", ["sleep", "300"], runtime="runc") as napper:   # a kit.Instance
...     napper.exec(["echo", "hi"]).stdout
'hi\\n'

Every call above acts on a default :class:`kit.Session`, made on first use; make your own
``kit.Session()`` to keep instances apart (a context manager that removes what it started).

In IPython or Jupyter: ``%load_ext kit``, then ``%container run busybox echo hello``.
``kit.bench`` (studies), ``kit.verify`` (the isolation matrix) and ``kit.widgets`` (live notebook
controls) load on first use, so ``import kit`` stays light (no pandas, no matplotlib, no ipywidgets).
"""

from __future__ import annotations

from .version import __version__  # noqa: F401  (kit.__version__)

from . import errors, images, networks, runtimes, volumes
from .api import exec_, logs, prune, ps, rm, run, start, stop
from .errors import KitError
from .instance import Instance
from .net import free_port, wait_for_port, wait_until
from .result import RunResult
from .session import Session

exec = exec_  # noqa: A001  (kit.exec(name, cmd) reads naturally; the builtin is untouched)

__all__ = [
    "__version__", "Session", "Instance", "run", "start", "ps", "logs", "exec", "stop", "rm", "prune",
    "RunResult", "KitError", "errors", "images", "networks", "volumes", "runtimes", "load_ipython_extension", "bench", "verify",
    "net", "free_port", "wait_for_port", "wait_until", "widgets",
    "compose", "warm",
]

#: Public subpackages imported on first attribute access (PEP 562), not by ``import kit``.
_LAZY = ("bench", "verify", "widgets", "compose", "warm")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)  # also binds kit.<name>
    raise AttributeError(f"module 'kit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def load_ipython_extension(ipython):
    """``%load_ext kit``: registers ``%container``, ``%%container``, ``%vm``, ``%process``, ``%compose`` and ``%bench``."""
    from .magics import load_ipython_extension as _load

    _load(ipython)
