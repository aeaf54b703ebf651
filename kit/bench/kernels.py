"""Guest kernels as a study dimension: the same VM cells once per kernel.

A study with ``kernels=["kit", "distro"]`` measures each cell of a VM runtime once per guest
kernel (the ``kernel=`` option of :func:`kit.run`: the kit's own minimal kernel, the
distribution's, or a path), so it shows how much of a VM's start and memory is its kernel's
configuration and how much is virtualization. Rows of VM runtimes carry a ``kernel`` column
(the choice as given); other runtimes' rows have ``""`` there. Statistics, comparisons, figures and
tables keep kernels apart by naming those rows' runtime ``RUNTIME/KERNEL`` (:func:`labelled`).
"""

from __future__ import annotations

from pathlib import Path

from .. import runtimes as _runtimes
from ..errors import InvalidSpec
from ..vm import kernel as _kernel


def check(kernels) -> tuple[str, ...]:
    """The study's kernels, validated: ``kit``, ``distro`` or an existing file (InvalidSpec otherwise)."""
    items = [k.strip() for k in kernels.split(",") if k.strip()] if isinstance(kernels, str) \
        else [str(k) for k in kernels]
    bad = [k for k in items if k not in _kernel.CHOICES and not Path(k).expanduser().is_file()]
    if bad:
        raise InvalidSpec(f"kernel(s) {', '.join(bad)} not known: give kit, distro or the path of a bzImage")
    return tuple(dict.fromkeys(items))


def for_runtime(runtime: str, kernels: tuple[str, ...]) -> list[str]:
    """The kernels a cell of ``runtime`` runs with: each of ``kernels`` for a VM runtime, else ``[""]``
    (one run, no kernel option)."""
    return list(kernels) if kernels and _runtimes.get(runtime).kind == "vm" else [""]


def options(kernel: str) -> dict:
    """The run options of one kernel choice (none for ``""``)."""
    return {"kernel": kernel} if kernel else {}


def labelled(df):
    """``df`` with each row that has a kernel named ``RUNTIME/KERNEL`` (a path by its file name), so
    that statistics, figures and tables keep kernels apart; unchanged without a kernel column."""
    if df is None or "kernel" not in df.columns:
        return df
    has = df["kernel"].fillna("").astype(str) != ""
    if not has.any():
        return df
    df = df.copy()
    names = df.loc[has, "kernel"].astype(str).map(lambda k: k if k in _kernel.CHOICES else Path(k).name)
    df.loc[has, "runtime"] = df.loc[has, "runtime"] + "/" + names
    return df
