"""The runtimes: one module per backend, all behind :class:`~kit.runtimes.base.Runtime`.

>>> import kit
>>> kit.runtimes.available()       # a DataFrame: name, kind, available, version, reason
"""

from __future__ import annotations

import importlib
import threading

from ..errors import RuntimeUnavailable
from .base import Availability, InstanceState, Runtime

__all__ = ["Runtime", "InstanceState", "Availability", "get", "names", "available", "default_container_runtime"]

#: name -> (module, class, keyword arguments). Modules are imported on first use,
#: so a backend whose Python dependency is missing only disables itself.
REGISTRY: dict[str, tuple[str, str, dict]] = {
    "process": ("kit.runtimes.process", "ProcessRuntime", {}),
    "lxc": ("kit.runtimes.lxc", "LXCRuntime", {}),
    "runc": ("kit.runtimes.oci", "OCIRuntime", {"binary": "runc"}),
    "crun": ("kit.runtimes.oci", "OCIRuntime", {"binary": "crun"}),
    "runsc": ("kit.runtimes.oci", "GVisorRuntime", {}),
    "docker": ("kit.runtimes.docker", "DockerRuntime", {}),
    "podman": ("kit.runtimes.podman", "PodmanRuntime", {}),
    "qemu": ("kit.runtimes.qemu", "QemuRuntime", {}),
}

#: Preference order when no runtime is named for a container.
CONTAINER_PREFERENCE = ("runc", "crun", "docker", "lxc", "runsc", "podman")

_instances: dict[str, Runtime] = {}
_instances_lock = threading.Lock()


class _Missing(Runtime):
    """Stands in for a backend whose module could not be imported."""

    def __init__(self, name: str, kind: str, why: str):
        super().__init__()
        self.name, self.kind, self._why = name, kind, why

    def probe(self):
        return Availability(self.name, self.kind, False, reason=self._why)

    def start(self, inst, stream=None):
        raise RuntimeUnavailable(f"runtime {self.name!r} is not available here: {self._why}")

    stop = exec = start  # type: ignore[assignment]


_KINDS = {"process": "process", "runsc": "sandbox", "qemu": "vm"}


def names() -> list[str]:
    return list(REGISTRY)


def of_kind(kind: str) -> str:
    """The first registered runtime of ``kind`` (``process``, ``container``, ``sandbox``, ``vm``),
    without importing any backend: what ``%vm`` and ``%process`` run.

    >>> of_kind("vm")
    'qemu'

    Raises:
        RuntimeUnavailable: no runtime of that kind.
    """
    for name in REGISTRY:
        if _KINDS.get(name, "container") == kind:
            return name
    raise RuntimeUnavailable(f"no runtime of kind {kind!r}: the kinds are process, container, sandbox, vm")


def get(name: str) -> Runtime:
    """The runtime object called ``name`` (whether or not it is usable here).

    Raises:
        RuntimeUnavailable: no runtime of that name.
    """
    if name not in REGISTRY:
        raise RuntimeUnavailable(f"unknown runtime {name!r}: choose one of {', '.join(REGISTRY)}")
    rt = _instances.get(name)
    if rt is not None:
        return rt
    with _instances_lock:  # one object per runtime, however many threads ask first
        if name not in _instances:
            module, cls, kwargs = REGISTRY[name]
            try:
                _instances[name] = getattr(importlib.import_module(module), cls)(**kwargs)
            except Exception as e:  # ImportError, or a backend bug: disable just that backend
                _instances[name] = _Missing(name, _KINDS.get(name, "container"), f"backend failed to load: {e}")
        return _instances[name]


def require(name: str) -> Runtime:
    """The runtime called ``name``, or RuntimeUnavailable saying why it cannot run here."""
    rt = get(name)
    a = rt.availability()
    if not a.available:
        raise RuntimeUnavailable(f"runtime {name!r} is not available here: {a.reason}")
    return rt


def default_container_runtime() -> str:
    for name in CONTAINER_PREFERENCE:
        if get(name).availability().available:
            return name
    raise RuntimeUnavailable(
        "no container runtime is available here: run 'make setup' (or install runc or docker.io); "
        "see kit.runtimes.available() for why each one was rejected"
    )


def available(refresh: bool = False):
    """A DataFrame of every runtime: name, kind, available, version, reason."""
    import pandas as pd

    rows = []
    for name in REGISTRY:
        a = get(name).availability(refresh=refresh)
        rows.append({"name": a.name, "kind": a.kind, "available": a.available, "version": a.version,
                     "reason": a.reason, **({"details": "; ".join(f"{k}={v}" for k, v in a.info.items())}
                                            if a.info else {"details": ""})})
    return pd.DataFrame(rows, columns=["name", "kind", "available", "version", "reason", "details"])
