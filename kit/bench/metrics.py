"""The tidy results frame: its columns, and what every metric means.

One row per (run, metric). :data:`METRICS` travels with the data: in every
saved ``study.json`` (``meta["metrics"]``) and in the frame's
``df.attrs["metrics"]``, so a reader knows exactly what each number is without
this code. The docs' metrics reference (docs/reference/metrics.md) is generated from it at each
build (docs/_hooks/kit_docs.py), so the definitions are never written twice.
"""

from __future__ import annotations

import hashlib
import json

#: Columns of the results frame, in order. A study of start modes adds ``start`` (cold, precreated,
#: snapshot) and ``pool``: ``hit`` when a warm start's container (or checkpoint, or VM template) was
#: waiting, ``miss`` when the start made it inside its clock, "" for a cold start; misses are left out of
#: statistics unless asked (``misses=True``). A fleet run adds ``host``. A density study of KSM settings
#: adds ``ksm`` (on, off), one of guest memory sizes ``vm_memory`` (MiB; "" for a runtime that is no VM).
#: A study of VM guest kernels adds ``kernel`` (kit, distro or a path; "" for a runtime that boots none).
COLUMNS = [
    "study", "part", "image", "runtime", "kind", "workload", "round", "order", "repeat", "warmup",
    "n", "component", "metric", "value", "unit", "accel", "status", "timestamp",
]

#: metric -> (unit, definition). ``component`` narrows some of them (see each text).
METRICS: dict[str, tuple[str, str]] = {
    # -- startup ---------------------------------------------------------------
    "launch_to_exit": ("s", "run-to-exit workloads: from the request (phase 'requested', stamped by kit.api "
                            "just before it hands the instance to the runtime, the same moment for every "
                            "runtime and start mode) to phase 'exited': the host has the command's exit status "
                            "and the instance's own host process has ended (the bare process reaped; runc run, "
                            "runsc run or lxc-execute exited, with the cleanup they do before handing the "
                            "status over; Docker's wait answered; QEMU exited, after the guest's power-off). "
                            "It includes the phase 'prepare', and for a warm start that found nothing waiting "
                            "(pool 'miss') the making of its container, checkpoint or VM template. Each sample "
                            "starts on a quiet kit: no removal or pool refill of an earlier run still runs."),
    "launch_to_ready": ("s", "services and idle instances: from the request (as launch_to_exit) to readiness. A "
                             "service: its probe succeeded (TCP on 127.0.0.1, log line, probe command; polled "
                             "every 5 ms). An idle instance: its command started, as the host sees it (phase "
                             "'started': the exec succeeded (process), the container left 'created' (OCI), "
                             "Docker's start call returned; LXC's log says the container's init started, and "
                             "the command follows it: LXC shows nothing later; a VM: phase 'command', the guest "
                             "init's mark just before it execs the command)."),
    "teardown": ("s", "run-to-exit workloads: from phase 'exited' until the kit has removed everything the "
                      "instance left (runtime state, mounts, cgroup, files); kit.run returns before the removal "
                      "ends (it finishes in the background), so it is waited for and timed to its end. Services: "
                      "the stop request and removal (kit.rm)."),
    "total": ("s", "the user's view: from calling kit.run/kit.start until everything is removed, including the "
                   "kit's own checks before the request (image lookup, command lookup, port check): those checks "
                   "+ launch_to_exit (or launch_to_ready) + teardown. A service's time up between readiness and "
                   "its stop request is left out."),
    "phase": ("s", "a milestone, in seconds after the request (component = its name). 'prepare' is the kit's and "
                   "the runtime's own preparation before the runtime's process or API call starts (overlay, OCI "
                   "bundle, cgroup, VM disk; Docker's image check; a warm miss's container, checkpoint or "
                   "template): phase 'launched' - 'requested'. Then what the runtime exposes: 'started' (see "
                   "launch_to_ready), OCI create/start, Docker image_ready/created, VM kernel, init, spec, "
                   "command, 'command_exited' (the guest init reported the exit code, before the power-off), and "
                   "'exited' (the end of launch_to_exit)."),
    # -- memory (one idle instance at steady state) --------------------------
    "pss": ("bytes", "proportional set size summed over every host process of the instance (the workload, "
                     "runsc sentry and gofer, QEMU), via psutil memory_full_info; pages shared with k "
                     "processes count 1/k each. Steady state: two readings 0.5 s apart within 2 %. The "
                     "runtime's monitor process is not included: see monitor_pss. Every memory figure of "
                     "host processes (pss, uss, rss, pss_by_process, monitor_pss, daemon_pss, density_*pss*) "
                     "is whole or flagged: when a process exists but cannot be read (access denied, or no "
                     "PSS from the kernel: USS never stands in for it), the figure's rows have status "
                     "'partial: <which processes, why>', summaries leave them out, and a 'failed' row "
                     "names the figure. A process that ended meanwhile holds no memory and is not counted."),
    "monitor_pss": ("bytes", "PSS of the per-instance process that only supervises the instance (runc run, "
                             "LXC's monitor, the runsc run CLI, Docker's containerd-shim; component: its process "
                             "name), reported apart and not included in pss: a user's `runc run -d` or containerd "
                             "keeps no `runc run` process, so it is a cost of how the instance is held, not of the "
                             "isolation."),
    "uss": ("bytes", "unique set size summed over the same processes: memory freed if the instance ended."),
    "rss": ("bytes", "resident set size summed over the same processes (shared pages counted in full each time; "
                     "an upper bound, for reference)."),
    "pss_by_process": ("bytes", "PSS of the instance's host processes (those of pss) grouped by process name "
                                "(component); the parts that add up to pss."),
    "cgroup_working_set": ("bytes", "the instance's cgroup memory usage minus inactive file cache "
                                    "(docker stats' formula; v1: usage_in_bytes - total_inactive_file, v2: "
                                    "memory.current - inactive_file); includes kernel memory charged to it."),
    "cgroup_usage": ("bytes", "the instance's cgroup memory usage, page cache included (v1 usage_in_bytes, v2 "
                              "memory.current)."),
    "guest_used": ("bytes", "VMs: the guest kernel's own view, MemTotal - MemAvailable from the guest's "
                            "/proc/meminfo."),
    "guest_total": ("bytes", "VMs: MemTotal from the guest's /proc/meminfo (guest RAM minus what its kernel "
                             "reserves)."),
    "daemon_pss": ("bytes", "fixed cost of a daemon shared by all instances of a runtime (component: dockerd, "
                            "containerd), PSS of its processes; not included in any instance's pss."),
    # -- disk --------------------------------------------------------------------
    "image_apparent": ("bytes", "bytes of the image in one format (component: rootfs, a per-runtime derivation "
                                "under the image's formats/ directory, docker = the Docker image size, kernel = "
                                "the guest kernel file a VM boots by default, not the other cached kernels and "
                                "module trees): sum of file sizes, each hard-linked file once."),
    "image_allocated": ("bytes", "as image_apparent, but the blocks allocated on disk (st_blocks * 512)."),
    "instance_apparent": ("bytes", "bytes one live instance adds on disk (its state directory and writable "
                                   "layer, not crossing into mounts; files hard-linked to the image count as "
                                   "shared, not here), apparent size."),
    "instance_allocated": ("bytes", "as instance_apparent, allocated blocks."),
    "image_shared": ("bytes", "allocated bytes of the image formats this runtime reads (see image_allocated), "
                              "each file once: paid once however many instances run. For a VM, the files QEMU "
                              "boots it from, read from its command line: its kernel, its initramfs (the kit's "
                              "init and the modules it loads, or those with the image) and its read-only disk."),
    "total_for_n": ("bytes", "allocated bytes on disk for n live instances with sharing accounted: the image "
                             "formats the runtime uses, counted once, plus every instance's own bytes."),
    "volume_apparent": ("bytes", "bytes in a volume an instance mounts (component: the named volume, or the host "
                                 "directory), apparent size; apart from the image and the instance's own bytes, "
                                 "and outside total_for_n: a volume outlives its instances."),
    "volume_allocated": ("bytes", "as volume_apparent, allocated blocks."),
    # -- density -----------------------------------------------------------------
    "density_start": ("s", "launch_to_ready of the n-th idle instance while n-1 others are running."),
    "density_pss_total": ("bytes", "sum of the PSS of the host processes of all n idle instances (those of pss: "
                                   "monitors apart)."),
    "density_monitor_pss_total": ("bytes", "sum of the PSS of the monitor processes of all n idle instances (those "
                                           "of monitor_pss); not included in density_pss_total."),
    "density_pss_per_instance": ("bytes", "density_pss_total / n."),
    "density_working_set_total": ("bytes", "sum of the cgroup working sets of the n instances."),
    "density_host_used": ("bytes", "growth of the host's MemTotal - MemAvailable since before the first "
                                   "instance started (everything: processes, page tables, kernel, caches)."),
    "density_host_per_instance": ("bytes", "gVisor's density method: the host's MemAvailable before the first "
                                           "instance started minus MemAvailable with n running, divided by n "
                                           "(density_host_used / n): what each instance costs the host, shared "
                                           "page cache, kernel objects and KSM's merging included, neighbours' "
                                           "growth too."),
    "ksm_pages_shared": ("count", "density with KSM on (column ksm 'on'): the host's "
                                  "/sys/kernel/mm/ksm/pages_shared once merging has settled with n instances "
                                  "running (kit.bench.ksm.settle): distinct merged pages kept."),
    "ksm_pages_sharing": ("count", "as ksm_pages_shared, /sys/kernel/mm/ksm/pages_sharing: further pages mapped "
                                   "onto a merged one, i.e. pages saved."),
    "ksm_merged": ("bytes", "density with KSM on: pages of the n instances' own host processes that KSM merged "
                            "(/proc/PID/ksm_merging_pages summed, times the page size)."),
    "ksm_settle": ("s", "density with KSM on: how long kit.bench.ksm.settle waited with n instances running "
                        "(its rule: two full scans, pages_sharing within 2 % or 16 pages of the scan before; a "
                        "deadline of 120 s, the figures after it flagged 'partial')."),
    # -- storm (kit.bench.storm: n instances started at once) -----------------
    "storm_wall": ("s", "one storm (n: its size): from the release of its n threads, all waiting at a barrier, "
                        "each making one foreground kit.run of the workload, until the last instance is removed "
                        "(its teardown ended). In part storm, launch_to_exit and total are each instance's own "
                        "(total: from the release to its removal's end)."),
    "storm_starts_per_s": ("1/s", "the instances of one storm that ran to exit status 0, divided by its "
                                  "storm_wall."),
    "storm_failures": ("count", "the instances of one storm that did not run to exit status 0 (error, timeout, "
                                "another exit status; a 'failed' row each says why)."),
    "storm_cpu_per_start": ("s", "the host's busy CPU time (/proc/stat: user, nice, system, irq, softirq over "
                                 "every CPU) from just before one storm's release to its last removal, divided by "
                                 "its instances that ran to exit status 0; everything the host ran meanwhile is "
                                 "in it."),
    # -- load (kit.bench.loads: a tool's own figures while the instance works) ------
    "throughput": ("per row", "load workloads: the rate the tool reported, unit as it counts (component: the "
                              "operation): sysbench cpu events/s, sysbench memory MiB/s, fio IOPS (read, write), "
                              "iperf3 Gbit/s received, redis-benchmark requests/s (SET, GET), sysbench oltp "
                              "transactions/s (and queries/s), dd syscalls/s, tcp-rtt round trips/s (latency load). "
                              "Host loads measured inside the instance's network namespace instead of through its "
                              "published port have components prefixed 'direct/'."),
    "p50": ("ms", "load workloads: median latency of one operation as the tool measured it (fio completion "
                  "latency, redis-benchmark request latency, tcp-rtt round trip of 64 bytes)."),
    "p95": ("ms", "load workloads: 95th percentile latency of one operation (fio, redis-benchmark; sysbench: its "
                  "'95th percentile' of one event or transaction)."),
    "p99": ("ms", "load workloads: 99th percentile latency of one operation (fio, redis-benchmark, tcp-rtt)."),
    "mean_latency": ("ms", "load workloads: sysbench's average latency of one event or transaction."),
    "op_time": ("ns", "syscall load: wall time of one system call, dd bs=1 from /dev/zero to /dev/null "
                      "(one read(2) and one write(2) per byte) divided by the calls."),
    "cpu_per_op": ("µs", "load workloads: host CPU time spent during the load divided by the operations the tool "
                         "itself counted, never a rate times the wall time (events, MiB transferred, transactions, "
                         "I/Os, syscalls; MiB received by iperf3; round trips, warm-up ones included; "
                         "redis-benchmark: -n times the tests it ran one after the other, SET then GET). "
                         "Component 'instance/<op>': the instance's cgroup cpuacct, or for VMs and the bare process "
                         "the CPU time of its host processes, QEMU's included, plus for the bare process a tool run "
                         "beside it (its own time from its reap); 'forwarder/<op>': every thread of the kit's port "
                         "forwarder (accept loops, namespace socket maker, connection threads, in the Python "
                         "process; Docker's published ports go through it too) or podman's rootlessport; "
                         "'direct/...': the same load inside the instance's network namespace, no forwarder)."),
    "load_time": ("s", "load workloads: wall time of one load run, from starting the tool to its exit."),
    "retransmits": ("count", "network load: TCP retransmissions iperf3's sender reported."),
    # -- failures ----------------------------------------------------------------
    "failed": ("count", "a run or measurement that did not complete (status says why: timeout, error message; "
                        "component guest_view: the VM's own memory view could not be read from the measured VM; "
                        "component pss, monitor_pss, daemon_pss/<daemon>, density_pss_total or "
                        "density_monitor_pss_total: some processes of that figure could not be read, so its rows "
                        "are flagged 'partial')."),
}

#: How each runtime kind is presented (plots and tables), in this order.
KINDS = ("process", "container", "sandbox", "vm")


def unit(metric: str) -> str:
    return METRICS.get(metric, ("", ""))[0]


def definitions() -> dict[str, dict[str, str]]:
    """METRICS as a JSON-friendly dict: name -> {unit, definition}."""
    return {k: {"unit": u, "definition": d} for k, (u, d) in METRICS.items()}


def fingerprint(metrics: dict | None = None) -> str:
    """A short hash of metric definitions (default: :data:`METRICS`, the current ones).

    Every committed result records the fingerprint of the definitions it was measured under (see
    :func:`kit.bench.storage.record` and ``meta["metrics_fingerprint"]`` of a saved study); a result
    whose fingerprint differs from the current one was measured under other definitions and must be
    measured again. Any change of a name, unit or definition changes it.

    Args:
        metrics: definitions as :data:`METRICS` holds them (name -> (unit, definition)) or as
            :func:`definitions` returns them (name -> {unit, definition}), e.g. a saved study's
            ``meta["metrics"]``.

    >>> fingerprint() == fingerprint(definitions())
    True
    """
    metrics = METRICS if metrics is None else metrics
    canon = {name: [v["unit"], v["definition"]] if isinstance(v, dict) else [v[0], v[1]]
             for name, v in metrics.items()}
    text = json.dumps(canon, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def markdown(names=None) -> str:
    """The definitions (of ``names``, default all) as a Markdown table: metric | unit | definition."""
    from tabulate import tabulate

    rows = [(f"`{k}`", u, d) for k, (u, d) in METRICS.items() if names is None or k in names]
    return tabulate(rows, headers=["metric", "unit", "definition"], tablefmt="github")
