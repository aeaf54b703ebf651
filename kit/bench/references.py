"""The field's published figures, each with its source, the boundary it was measured at and the
hardware it ran on: a reader places this machine's figures among them, never mistakes them for
measurements of this machine.

:data:`TABLE` holds every reference the kit shows. A :class:`Reference` without a source (a URL
and a title), a boundary or the hardware is refused when it is made (InvalidSpec): a number from
elsewhere without them is an anecdote. Each names the kit metric whose definition
(:data:`kit.bench.metrics.METRICS`) spans the same interval (``metric``), or none: only those are
drawn against a measured figure (``study.plot(references=True)``, :func:`drawn`); the others are
listed (:func:`table`), because a figure measured to another boundary is another figure.

>>> get("gvisor-syscall-runc").value
1939.0
>>> cite("firecracker-rate").startswith("[Firecracker design")
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from ..errors import InvalidSpec


@dataclass(frozen=True)
class Reference:
    """One published figure.

    Attributes:
        key: its name in :data:`TABLE`.
        what: what it is, in a few words.
        value: the figure, in ``unit``.
        unit: the kit metric's unit when ``metric`` is set (s, bytes, ns, ...), else the source's.
        subject: what the source measured (runtime or VMM, its version and settings).
        boundary: the interval or quantity measured, from the source's own description.
        hardware: the machine it ran on, as the source states it.
        source_url: where it is published (pinned to a commit where the source is a repository).
        source_title: the document's title.
        statistic: what kind of figure (mean, median, upper bound, target, ratio).
        metric: the kit metric with the same boundary, or "" (listed, not drawn).
        runtime: the kit runtime it stands beside when drawn ("" for a line across every runtime).
        per_core: the figure is per host core: drawn scaled by this machine's cores.
        note: what differs from the kit's figure even where the boundary is the same.
    """

    key: str
    what: str
    value: float
    unit: str
    subject: str
    boundary: str
    hardware: str
    source_url: str
    source_title: str
    statistic: str
    metric: str = ""
    runtime: str = ""
    per_core: bool = False
    note: str = ""

    def __post_init__(self):
        missing = [f for f in ("source_url", "source_title", "boundary", "hardware") if not str(getattr(self, f)).strip()]
        if missing:
            raise InvalidSpec(f"reference {self.key!r} has no {', '.join(missing)}: a published figure needs its "
                              f"source (URL and title), the boundary it was measured at and the hardware")
        if not str(self.source_url).startswith("https://"):
            raise InvalidSpec(f"reference {self.key!r}: source_url {self.source_url!r} is not an https:// address")

    def scaled(self, cores: int) -> float:
        """The figure for a host of ``cores`` cores (itself unless :attr:`per_core`)."""
        return self.value * cores if self.per_core else self.value

    @property
    def label(self) -> str:
        """A short label for a figure's mark: what, and whose figure it is."""
        return f"{self.what} ({self.source_title.split(',')[0]})"


_YOUKI = ("https://github.com/containers/youki/blob/4500c8e6856bcfec2fca20818c23c50bae26d007/README.md",
          "youki README, Motivation: a simple benchmark of a container from creation to deletion")
_YOUKI_BOUNDARY = ("create, start and forced delete of one container, three CLI calls as root "
                   "(hyperfine: 'RUNTIME create -b tutorial a && RUNTIME start a && RUNTIME delete -f a'), "
                   "nothing left afterwards")
_YOUKI_HW = ("12 cores, 32 GB, Ubuntu 21.04, kernel 5.11, cgroup hybrid (youki info); runc 1.0.0-rc93, "
             "crun 0.19.1")
_YOUKI_NOTE = ("the page cache was dropped before every run (hyperfine --prepare), and the container ran "
               "'sleep 30', killed by delete -f; the kit's runs are warm and their command exits")
_FC_DESIGN = ("https://github.com/firecracker-microvm/firecracker/blob/ed79412c846b28541e231d636bc7cd0cc1125ca6/"
              "docs/design.md", "Firecracker design, Features")
_FC_SPEC = ("https://github.com/firecracker-microvm/firecracker/blob/0aad46c68d1c83150ca2123a8e7477458acc92ee/"
            "SPECIFICATION.md", "Firecracker specification, Overhead")
_FC_SNAP = ("https://github.com/firecracker-microvm/firecracker/blob/0151dbcd4f9703fdbc90abb3a295c4c446df5bf1/"
            "docs/snapshotting/snapshot-support.md#performance", "Firecracker snapshotting, Performance")
_GVISOR = ("https://github.com/google/gvisor/blob/01b4cd6c11e8b7ab52d89a7ada24a707776b92ec/"
           "g3doc/architecture_guide/performance.md", "gVisor performance guide")
_GVISOR_SYSCALL_DATA = ("data: https://github.com/google/gvisor/blob/ff463a60a9260efe23fe31757251be115ddaacb3/"
                        "website/performance/syscall.csv")
_GVISOR_DENSITY_DATA = ("data: https://github.com/google/gvisor/blob/a3f97a757a8d6e18f03acecb68b484cc1608c3ae/"
                        "website/performance/density.csv")
_GVISOR_HW = "Google Compute Engine n1-standard-4 (Broadwell), Debian 9, kernel 4.19"
_GVISOR_SYSCALL = ("the time of one raw system call in the container: a binary makes a large number of them "
                   "and divides the time by their count")
_GVISOR_DENSITY = ("the host's available memory before and after starting many instances of the container "
                   "(50 of 'sleep'), the difference divided by their number")
_FELTER = ("https://dominoweb.draco.res.ibm.com/reports/rc25482.pdf",
           "Felter et al., An Updated Performance Comparison of Virtual Machines and Linux Containers "
           "(IBM Research Report RC25482, 2014; ISPASS 2015)")
_FELTER_HW = "IBM System x3650 M4: two Intel Xeon E5-2665 (Sandy Bridge-EP), 16 cores, 256 GB"


def _youki(runtime: str, value_ms: float, version: str) -> Reference:
    return Reference(f"youki-{runtime}", f"{runtime} create-start-delete", value_ms / 1e3, "s", f"{runtime} {version}",
                     _YOUKI_BOUNDARY, _YOUKI_HW, *_YOUKI, statistic="mean of >= 100 runs", metric="total",
                     runtime=runtime if runtime != "youki" else "", note=_YOUKI_NOTE)


def _gvisor(key: str, what: str, value: float, unit: str, subject: str, boundary: str, data: str, metric: str,
            runtime: str, statistic: str) -> Reference:
    return Reference(key, what, value, unit, subject, boundary, _GVISOR_HW, *_GVISOR, statistic=statistic,
                     metric=metric, runtime=runtime, note=data)


#: Every reference the kit shows, by key.
TABLE: dict[str, Reference] = {r.key: r for r in (
    _youki("runc", 352.3, "1.0.0-rc93"),
    _youki("crun", 153.5, "0.19.1"),
    _youki("youki", 198.4, "0.0.1"),
    Reference("firecracker-rate", "Firecracker: 5 microVMs per host core per second", 5.0, "1/s",
              "Firecracker microVMs, 1 vCPU, 128 MiB, a minimal Linux kernel",
              "a steady mutation rate (microVMs created per second) per host core", "a host's physical cores "
              "(the example: 180 per second on 36 physical cores; Firecracker's specification hosts are AWS "
              "i3.metal)", *_FC_DESIGN, statistic="supported rate", metric="storm_starts_per_s", per_core=True,
              note="drawn as a line: this figure times this machine's cores; the kit's starts are of the "
                   "study's runtimes, not of Firecracker microVMs"),
    Reference("firecracker-boot", "Firecracker: boot to /sbin/init", 0.125, "s",
              "Firecracker, 1 vCPU, 128 MiB, a Firecracker-tuned guest kernel, serial console disabled, a minimal "
              "root file system", "from the InstanceStart API call (the VMM already running and configured) to "
              "the start of the guest's /sbin/init", "AWS i3.metal, hyperthreading disabled, KVM", *_FC_SPEC,
              statistic="upper bound (specification)",
              note="no kit figure starts at a running VMM's start call: the kit's VM clock starts at the "
                   "request, before QEMU itself is launched"),
    Reference("firecracker-overhead", "Firecracker: VMM memory overhead", 5 * 1024**2, "bytes",
              "Firecracker, 1 vCPU, 128 MiB", "memory of the VMM's own threads, beside the guest's memory",
              "AWS i3.metal, hyperthreading disabled, KVM", *_FC_SPEC, statistic="upper bound (specification)",
              note="the kit's pss of a VM counts QEMU's whole process, guest memory included"),
    Reference("firecracker-snapshot", "Firecracker: snapshot resume", 0.008, "s",
              "Firecracker microVM, 2 vCPUs, 512 MB, one block and one network device",
              "snapshot resume latency (the CI's target; p90 5 ms)", "AWS m5d.metal, KVM", *_FC_SNAP,
              statistic="target (under 8 ms)",
              note="the kit's snapshot start counts from the request, QEMU's own start included"),
    _gvisor("gvisor-syscall-runc", "runc: one system call", 1939.0, "ns", "runc", _GVISOR_SYSCALL,
            _GVISOR_SYSCALL_DATA, "op_time", "runc", "mean"),
    _gvisor("gvisor-syscall-ptrace", "runsc (ptrace): one system call", 38219.0, "ns", "runsc, ptrace platform",
            _GVISOR_SYSCALL, _GVISOR_SYSCALL_DATA, "op_time", "runsc", "mean"),
    _gvisor("gvisor-syscall-kvm", "runsc (KVM platform): one system call", 763.0, "ns", "runsc, KVM platform",
            _GVISOR_SYSCALL, _GVISOR_SYSCALL_DATA, "", "", "mean"),
    _gvisor("gvisor-idle-runc", "runc: memory per idle container", 4092149.76, "bytes",
            "Docker containers with --runtime=runc (gVisor's perf.py density)", _GVISOR_DENSITY,
            _GVISOR_DENSITY_DATA, "density_host_per_instance", "docker", "host figure / n"),
    _gvisor("gvisor-idle-runsc", "runsc: memory per idle container", 23695032.32, "bytes",
            "Docker containers with --runtime=runsc, ptrace platform (gVisor's perf.py density)", _GVISOR_DENSITY,
            _GVISOR_DENSITY_DATA, "density_host_per_instance", "runsc", "host figure / n"),
    Reference("felter-linpack-kvm", "KVM (untuned): Linpack ÷ native", 241.3 / 290.8, "× native",
              "KVM guest, untuned (Linpack 241.3 against 290.8 GFLOPS native)",
              "Linpack throughput in a VM relative to the same machine without one", _FELTER_HW, *_FELTER,
              statistic="ratio of results"),
    Reference("felter-linpack-kvm-tuned", "KVM (tuned): Linpack ÷ native", 284.2 / 290.8, "× native",
              "KVM guest, vCPUs pinned and the cache topology exposed (284.2 against 290.8 GFLOPS)",
              "Linpack throughput in a VM relative to the same machine without one", _FELTER_HW, *_FELTER,
              statistic="ratio of results"),
    Reference("felter-rtt-kvm", "KVM: network round trip ÷ native", 1.8, "× native",
              "KVM guest with virtio networking (30 µs more per round trip)",
              "netperf TCP_RR round-trip latency relative to native", _FELTER_HW, *_FELTER,
              statistic="ratio of results"),
)}


def get(key: str) -> Reference:
    """The reference ``key``.

    Raises:
        InvalidSpec: no such reference (naming those there are).
    """
    try:
        return TABLE[key]
    except KeyError:
        raise InvalidSpec(f"no reference {key!r}: choose from {', '.join(TABLE)}") from None


def cite(key: str) -> str:
    """A Markdown link to the reference's source, titled: what a notebook or report puts beside it."""
    r = get(key)
    return f"[{r.source_title}]({r.source_url})"


def sentence(key: str) -> str:
    """The reference as one sentence a report can print: the figure, its boundary, the hardware and the
    source, labelled as not measured here."""
    r = get(key)
    return (f"*For reference, not measured here:* {r.what}: {shown(r)} ({r.statistic}; {r.boundary}; "
            f"{r.subject}; on {r.hardware}), from {cite(key)}.")


def shown(r: Reference) -> str:
    """The figure in readable units."""
    if r.unit == "s":
        return f"{r.value * 1e3:.4g} ms"
    if r.unit == "bytes":
        return f"{r.value / 1024**2:.3g} MiB"
    if r.unit == "ns":
        return f"{r.value / 1e3:.3g} µs"
    if r.unit == "1/s":
        return f"{r.value:g} per second" + (" per core" if r.per_core else "")
    return f"{r.value:.3g} {r.unit}"


def table(metrics=None, runtimes=None) -> pd.DataFrame:
    """Every reference as a row, with ``drawn``: whether it stands beside a figure of a frame that
    measured ``metrics`` on ``runtimes`` (both None: every one that has a kit metric), and ``why`` not."""
    rows = []
    for r in TABLE.values():
        why = _not_drawn(r, metrics, runtimes)
        rows.append({**asdict(r), "shown": shown(r), "drawn": not why, "why": why})
    return pd.DataFrame(rows)


def drawn(metrics, runtimes) -> list[Reference]:
    """The references drawn beside a frame that measured ``metrics`` on ``runtimes``: those whose
    boundary is a kit metric measured there, on a runtime measured there (or across every runtime)."""
    return [r for r in TABLE.values() if not _not_drawn(r, metrics, runtimes)]


def why_not(r: Reference, metrics, runtimes) -> str:
    """Why ``r`` is not drawn beside a frame that measured ``metrics`` on ``runtimes`` ("" if it is)."""
    return _not_drawn(r, metrics, runtimes)


def _not_drawn(r: Reference, metrics, runtimes) -> str:
    if not r.metric:
        return "measured to another boundary than any kit metric"
    if metrics is not None and r.metric not in set(metrics):
        return f"{r.metric} was not measured in this study"
    if runtimes is not None and r.runtime and r.runtime not in set(runtimes):
        return f"{r.runtime} was not measured in this study"
    return ""
