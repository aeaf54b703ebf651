"""Isolation Kit: see, measure and explain containers versus virtual machines.

>>> import kit
>>> kit.run("busybox", ["echo", "hello"], runtime="runc").stdout
'hello\\n'

In IPython or Jupyter: ``%load_ext kit``, then ``%container run busybox echo hello``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import errors, images, runtimes
from .api import exec_, logs, prune, ps, rm, run, start, stop
from .errors import KitError
from .result import RunResult

exec = exec_  # noqa: A001  (kit.exec(name, cmd) reads naturally; the builtin is untouched)

__all__ = [
    "__version__", "run", "start", "ps", "logs", "exec", "stop", "rm", "prune",
    "RunResult", "KitError", "errors", "images", "runtimes", "load_ipython_extension",
]


def load_ipython_extension(ipython):
    """``%load_ext kit``: registers ``%container``, ``%%container``, ``%vm`` and ``%process``."""
    from .magics import load_ipython_extension as _load

    _load(ipython)
