"""A study's parameters, written out once: :class:`StudyParams`, which :class:`~kit.bench.Study`,
``%bench``, ``kit bench`` and every host of a fleet run read.

Each field holds its default, its help text and how a command line spells it (the field's
metadata: :mod:`kit.bench.options` builds both parsers from it, and the docstrings of
:class:`StudyParams` and :class:`~kit.bench.Study` list it). Every value is checked in one place
(:meth:`StudyParams.__post_init__`: InvalidSpec saying what to give) and kept in one form: lists
as tuples, a comma-separated string split, memory budgets in bytes, ``parts`` and ``vm_repeat``
resolved. :meth:`~StudyParams.to_dict` and :meth:`~StudyParams.from_dict` are the form a saved
``study.json`` keeps (``meta["params"]``).

>>> p = StudyParams(runtimes="process,runc", workload=["true", "cpu"], repeat=3)
>>> p.runtimes, p.parts, p.loads
(('process', 'runc'), ('startup', 'memory', 'disk', 'density', 'load'), ('cpu',))
>>> StudyParams.from_dict(p.to_dict()) == p
True
"""

from __future__ import annotations

import shlex
import textwrap
from dataclasses import KW_ONLY, dataclass, field, fields

from ..errors import InvalidSpec
from ..spec import parse_memory
from . import kernels, loadpart, starts, storm
from .workloads import PRESETS, Workload, parse, parse_many

#: The parts a study can measure, in the order it measures them.
PARTS = ("startup", "storm", "memory", "disk", "density", "load")
#: The storm sizes of a study with the storm part and no ``storm`` given.
STORM_SIZES = (1, 4, 16)


def _workload_from_argv(words: list[str]):
    """The ``workload`` of a command line's trailing words: names (``kit bench cpu redis`` is two
    workloads) stay a list, anything else is one command; none: the default."""
    if not words:
        return None
    if all(w in loadpart.NAMES or w in PRESETS for w in words):
        return list(words)
    return " ".join(shlex.quote(w) for w in words)


def _param(default, help: str, *flags: str, **cli):
    """A field of :class:`StudyParams`: its default, its help text, and its command-line spelling
    (``flags``: default ``--field-name``; ``cli``: argparse keywords, ``positional=True`` for an
    argument without a flag, ``convert`` for the parsed value)."""
    return field(default=default, metadata={"help": help, "flags": flags, "cli": cli})


@dataclass(frozen=True)
class StudyParams:
    """Everything a study measures and how: images x runtimes x workloads, repeats, parts, limits and budgets.

    Read by :class:`~kit.bench.Study` (``Study(**kwargs)`` is ``StudyParams(**kwargs)``), by
    ``%bench`` and ``kit bench`` (:mod:`kit.bench.options`: one option per field) and, sent as
    :meth:`to_dict`, by every host of a fleet run (:mod:`kit.bench.fleet`).

    Raises:
        InvalidSpec: a value that cannot be measured with, saying what to give.
    """

    image: tuple[str, ...] = _param(
        "busybox", "image name, or several (a list; on a command line, -i once per image)", "-i", "--image",
        action="append", metavar="IMAGE")
    runtimes: str | tuple[str, ...] = _param(
        "all", "all (every runtime available here), or runtime names: a list or a comma-separated string",
        "-r", "--runtimes")
    workload: tuple = _param(
        "true", "what runs: a preset (true, echo, httpd, redis), a command line, a kit.bench.Workload, or a "
                "load (cpu, memory, syscall, fileio, fileio-volume, network, latency, redis, mariadb: see "
                "kit.bench.loadpart); several of them as a list (on a command line, several names). redis is "
                "the load unless parts leaves load out (then it is the startup preset)",
        nargs="*", metavar="WORKLOAD", convert=_workload_from_argv, positional=True)
    repeat: int = _param(10, "measured startup runs (or load rounds) per runtime, image and workload", "-n", "--repeat")
    _: KW_ONLY
    warmup: int = _param(1, "extra runs first, kept in the frame but flagged warmup")
    vm_repeat: int | None = _param(None, "measured runs for VM runtimes (boots take seconds); default min(repeat, 5)",
                                   type=int)
    parts: tuple[str, ...] | None = _param(
        None, "which of startup, memory, disk, density, load to measure (a list or comma-separated); default: "
              "load for load workloads, the other four for anything else")
    timeout: float = _param(120.0, "seconds before one run (or one instance becoming ready) is abandoned")
    seed: int = _param(0, "seeds the interleaving of runtimes in each round and the bootstrap")
    seconds: float = _param(5.0, "how long each load run lasts (the tool's own bound; it also has a deadline)")
    memory: str | None = _param(None, "memory limit of startup runs, e.g. 64m; default: none (each runtime's own)",
                                "-m", "--memory")
    idle_memory: str = _param("256m", "memory limit of the idle instances of memory, density and disk (a VM's RAM)")
    density_max: int = _param(8, "most idle instances at once")
    vm_density_max: int = _param(4, "most idle VMs at once")
    density_memory_budget: int | str = _param("4g", "stop adding idle instances before their memory would pass this")
    density_time_budget: float = _param(60.0, "stop adding idle instances of a runtime before this many seconds")
    name: str = _param("study", "the study's label in the frame")
    progress: bool = _param(True, "a progress bar while it runs (--no-progress: none; not saved with the results)",
                            "--no-progress", action="store_false")
    starts: tuple[str, ...] = _param(
        ("cold",), "start modes of the startup runs: cold, precreated, snapshot (a list or comma-separated); each "
                   "cell runs once per mode its runtime offers, and rows get a start column (kit.bench.starts)")
    storm: tuple[int, ...] | None = _param(
        None, "start storms: instances started at once, each size a storm repeated `repeat` times (a list or "
              "comma-separated, e.g. 1,4,16; at most 64, and 5000 instances in all: kit.bench.storm); given "
              "without parts, the study is of storms only; default 1,4,16 when parts has storm")
    ksm: tuple[bool, ...] = _param(
        ("off",), "KSM settings of the density part: off, on or both (a list of booleans, or off,on): with on, "
                  "KSM is turned on for that pass only and waited for, and rows get a ksm column (kit.bench.ksm)")
    vm_memory: tuple[int, ...] | None = _param(
        None, "guest memory sizes (MiB) the density part sweeps for VM runtimes, e.g. 128,256,512 (a list or "
              "comma-separated; rows get a vm_memory column); default: idle_memory only")
    kernels: tuple[str, ...] = _param(
        (), "VM guest kernels to compare: kit, distro or the path of a bzImage (a list or comma-separated); each "
            "cell of a VM runtime runs once per kernel, and rows get a kernel column (kit.bench.kernels); default: "
            "none, VMs boot their default kernel")

    def __post_init__(self):
        def keep(name, value):
            object.__setattr__(self, name, value)

        keep("starts", starts.check(self.starts))
        keep("kernels", kernels.check(self.kernels))
        keep("image", _as_tuple(self.image, "image"))
        keep("runtimes", self.runtimes if self.runtimes == "all" else _as_tuple(self.runtimes, "runtime"))
        items = list(self.workload) if isinstance(self.workload, (list, tuple)) else [self.workload]
        asked = ("storm",) if self.parts is None and self.storm is not None else self.parts
        startup, loads, parts = loadpart.split(items, None if asked is None else _as_tuple(asked, "part"))
        keep("workload", (tuple(parse_many(startup)) if startup else ()) + tuple(loads))
        for label, low in (("repeat", 1), ("warmup", 0), ("density_max", 1), ("vm_density_max", 1)):
            v = getattr(self, label)
            if not isinstance(v, int) or v < low:
                raise InvalidSpec(f"{label} {v!r} must be a whole number >= {low}")
        keep("vm_repeat", min(self.repeat, 5) if self.vm_repeat is None else int(self.vm_repeat))
        bad = [p for p in parts if p not in PARTS]
        if bad:
            raise InvalidSpec(f"unknown part(s) {', '.join(bad)}: choose from {', '.join(PARTS)}")
        keep("parts", tuple(parts))
        self._steady_sweeps(keep)
        keep("storm", storm.sizes(self.storm if self.storm is not None else STORM_SIZES) if "storm" in parts
             else (None if self.storm is None else storm.sizes(self.storm)))
        if "storm" in parts and any(w.kind != "exit" for w in self.workloads):
            raise InvalidSpec("a storm runs workloads to their exit: "
                              f"{', '.join(w.name for w in self.workloads if w.kind != 'exit')} does not exit")
        if "load" in parts:
            loadpart.check(list(self.loads), self.seconds)
        keep("seconds", float(self.seconds))
        if not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise InvalidSpec(f"timeout {self.timeout!r} must be a positive number of seconds")
        keep("timeout", float(self.timeout))
        keep("seed", int(self.seed))
        parse_memory(self.memory)
        parse_memory(self.idle_memory)
        keep("density_memory_budget", parse_memory(self.density_memory_budget))
        keep("density_time_budget", float(self.density_time_budget))
        keep("progress", bool(self.progress))

    def _steady_sweeps(self, keep) -> None:
        """``ksm`` as booleans and ``vm_memory`` as MiB, checked."""
        keep("ksm", tuple(dict.fromkeys(_switch(v) for v in _items(self.ksm, "ksm setting"))))
        if self.vm_memory is not None:
            mib = [parse_memory(v if isinstance(v, str) and not v.isdigit() else f"{v}m", minimum=64 * 1024**2,
                                what="a VM") // 1024**2 for v in _items(self.vm_memory, "VM memory size")]
            keep("vm_memory", tuple(sorted(set(mib))))

    @property
    def workloads(self) -> tuple[Workload, ...]:
        """The startup workloads of :attr:`workload` (none in a study of loads only)."""
        return tuple(w for w in self.workload if isinstance(w, Workload))

    @property
    def loads(self) -> tuple[str, ...]:
        """The load workloads of :attr:`workload`, by name (see :mod:`kit.bench.loadpart`)."""
        return tuple(w for w in self.workload if isinstance(w, str))

    def to_dict(self) -> dict:
        """The parameters as ``study.json`` keeps them, in JSON types. Two keep the names every saved
        study has: ``images`` for :attr:`image`, and ``workloads`` (a record of each startup workload)
        with ``loads`` (the load names) for :attr:`workload`; ``progress`` is not saved."""
        out = {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
               for f in fields(self) if f.name not in ("image", "workload", "progress")}
        out.update(images=list(self.image), workloads=[_record(w) for w in self.workloads], loads=list(self.loads))
        return out

    @classmethod
    def from_dict(cls, saved: dict, **overrides) -> "StudyParams":
        """The parameters of a :meth:`to_dict` (a saved ``study.json``'s ``params``); ``overrides`` (field
        names) replace any. A key a study of an older kit did not save keeps its default."""
        names = {f.name for f in fields(cls)} - {"image", "workload", "progress"}
        kw = {k: v for k, v in saved.items() if k in names}
        startup = [parse(_from_record(w)) for w in saved.get("workloads", [])]
        kw.update(image=saved.get("images") or "busybox", workload=startup + list(saved.get("loads") or []) or "true")
        return cls(**{**kw, **overrides})


def args_doc(indent: str = "    ") -> str:
    """An ``Args:`` section (Google style) of every parameter with its help text and default."""
    lines = [f"{indent}Args:"]
    for f in fields(StudyParams):
        default = f" (default {_shown(f.default)})" if f.default is not None and "default" not in f.metadata["help"] \
            else ""
        lines += textwrap.wrap(f"{f.name}: {f.metadata['help']}{default}.", 100, initial_indent=indent * 2,
                               subsequent_indent=indent * 3, break_on_hyphens=False)
    return "\n".join(lines) + "\n"


def _shown(value) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


StudyParams.__doc__ += "\n" + args_doc()


def _as_tuple(value, what: str) -> tuple[str, ...]:
    """A list, a tuple or a comma-separated string as a tuple of names (InvalidSpec when empty)."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    else:
        items = [str(v) for v in value]
    if not items:
        raise InvalidSpec(f"no {what} given: name at least one")
    return tuple(items)


def _items(value, what: str) -> list:
    """A list, a tuple, one value or a comma-separated string as a list (InvalidSpec when empty)."""
    if isinstance(value, str):
        return list(_as_tuple(value, what))
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise InvalidSpec(f"no {what} given: name at least one")
    return items


def _switch(v) -> bool:
    """on/off, true/false, yes/no, 1/0 or a boolean as a boolean."""
    if isinstance(v, bool):
        return v
    word = str(v).strip().lower()
    if word in ("on", "true", "yes", "1"):
        return True
    if word in ("off", "false", "no", "0"):
        return False
    raise InvalidSpec(f"ksm setting {v!r} is not on or off: give e.g. ksm=[False, True] (on a command line: off,on)")


def _record(w: Workload) -> dict:
    """A workload as study.json keeps it: enough to rebuild it (see :func:`_from_record`)."""
    tcp = {"send": w.tcp.decode("latin-1")} if isinstance(w.tcp, bytes) else w.tcp
    return {"name": w.name, "argv": list(w.argv), "kind": w.kind, "tcp": tcp, "log": w.log,
            "probe": list(w.probe) if w.probe else None}


def _from_record(w: dict):
    """A workload back from study.json (presets by name; anything else as saved)."""
    if w.get("name") in PRESETS:
        return w["name"]
    tcp = w.get("tcp") or False
    if isinstance(tcp, dict):
        tcp = tcp["send"].encode("latin-1")
    return Workload(w["name"], tuple(w["argv"]), w.get("kind", "exit"), tcp=tcp, log=w.get("log"),
                    probe=tuple(w["probe"]) if w.get("probe") else None)
