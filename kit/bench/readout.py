"""What a study's frame says, as the sentences a notebook prints: each one computed from the frame.

A notebook that compares runtimes must say what each figure counts, or the comparison misleads:
an idle container's own PSS leaves out its per-instance helper (Docker's containerd-shim, runc's
``runc run``) and the daemons every container of its runtime shares (dockerd, containerd), while
a VM's figure is QEMU, which holds everything. :func:`memory_costs` puts the three side by side;
:func:`memory_sentences` compares the instance plus its helper, names the daemons once, and gives
every ratio both ways. :func:`vm_start_sentences` says how much of a VM's start was the guest
booting (from its phases), :func:`kernel_sentence` how much of it
was the guest kernel's configuration, :func:`docker_gap_sentence` where Docker's time over runc goes,
:func:`baseline_sentence` what the bare-process baseline really runs, and :func:`accel_sentence`
why VMs run without KVM, in words rather than QEMU's assertion. :func:`isolation_matrix` marks the
cells an instance with a kernel of its own answers about that kernel, not the host's.

>>> memory_sentences(pd.DataFrame(columns=list(COST_COLUMNS)))
[]
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd

from .kernels import labelled
from .stats import measured

MIB = 2**20

#: The columns of :func:`memory_costs`, in bytes where not named otherwise.
COST_COLUMNS = ("kind", "instance", "helper", "helper_names", "daemons", "daemon_names")


def _median_by(df: pd.DataFrame, part: str, metric: str, component: str | None = "") -> pd.Series:
    rows = measured(df[(df["part"] == part) & (df["metric"] == metric)])
    if component is not None:
        rows = rows[rows["component"].fillna("") == component]
    return rows.groupby("runtime")["value"].median()


def memory_costs(df: pd.DataFrame) -> pd.DataFrame:
    """One idle instance per runtime: its own PSS, its helper's (monitor_pss summed per run) and the
    daemons its runtime shares (daemon_pss summed over the daemons), with their names; bytes."""
    m = measured(df[df["part"] == "memory"])
    if m.empty:
        return pd.DataFrame(columns=list(COST_COLUMNS))
    kinds = m.drop_duplicates("runtime").set_index("runtime")["kind"]
    out = pd.DataFrame({"kind": kinds, "instance": _median_by(df, "memory", "pss")})
    mon = m[m["metric"] == "monitor_pss"]
    per_run = mon.groupby(["runtime", "round", "repeat"], dropna=False)["value"].sum()  # round: NA in memory
    out["helper"] = per_run.groupby("runtime").median() if len(per_run) else 0.0
    out["helper_names"] = mon.groupby("runtime")["component"].agg(lambda c: ", ".join(sorted(set(c))))
    dae = m[m["metric"] == "daemon_pss"].groupby(["runtime", "component"])["value"].median()
    out["daemons"] = dae.groupby("runtime").sum() if len(dae) else 0.0
    out["daemon_names"] = (dae.reset_index().groupby("runtime")["component"].agg(", ".join)
                           if len(dae) else "")
    out[["helper", "daemons"]] = out[["helper", "daemons"]].fillna(0.0)
    out[["helper_names", "daemon_names"]] = out[["helper_names", "daemon_names"]].fillna("")
    return out.dropna(subset=["instance"]).sort_values("instance")


def mib(n: float) -> str:
    """``n`` bytes in MiB, with the precision small figures need."""
    v = n / MIB
    return f"{v:.1f} MiB" if v < 10 else f"{v:.0f} MiB"


def both_ways(a: str, va: float, b: str, vb: float) -> str:
    """'A is Nx B, B is P % of A': a ratio stated both ways."""
    return f"{a} is **{va / vb:.1f}x** {b}, {b} **{vb / va:.1%}** of {a}"


def _counted(r) -> str:
    helper = f" + {mib(r.helper)} helper ({r.helper_names})" if r.helper else " (no helper process)"
    return f"{mib(r.instance + r.helper)} ({mib(r.instance)} instance{helper})"


def memory_sentences(costs: pd.DataFrame) -> list[str]:
    """The memory comparison, counting the same things on both sides: the instance plus its helper,
    with the daemons its runtime shares named once (see :func:`memory_costs`)."""
    if costs.empty:
        return []
    c = costs.assign(whole=costs.instance + costs.helper)
    lean = c.whole.idxmin()
    text = [f"Counted as the instance's own processes plus its per-instance helper: at idle **{lean}** cost "
            f"the least, {_counted(c.loc[lean])}."]
    boxes = c[c.kind.isin(["container", "sandbox"])]
    for vm, r in c[c.kind == "vm"].iterrows():
        for ct in dict.fromkeys([boxes.whole.idxmin()] + list(boxes[boxes.daemons > 0].index)) if len(boxes) else []:
            b = c.loc[ct]
            text.append(f"An idle VM ({vm}, QEMU holding the whole guest) cost **{mib(r.whole)}**; the idle {ct} "
                        f"container {_counted(b)}: {both_ways(f'the {vm} VM', r.whole, f'the {ct} container', b.whole)}.")
    vms = c[c.kind == "vm"]
    for rt, r in c[c.daemons > 0].iterrows():
        first = r.daemons + r.whole
        text.append(f"{rt} also keeps daemons ({r.daemon_names}: **{mib(r.daemons)}**), counted once for all its "
                    f"containers: the first {rt} container costs {mib(first)} with them, each further one "
                    f"{mib(r.whole)}"
                    + "".join(f"; against one {vm} VM, {both_ways(f'the {vm} VM', v.whole, f'a lone {rt} container with its daemons', first)}"
                              for vm, v in vms.iterrows()) + ".")
    return text


def density_sentences(df: pd.DataFrame) -> list[str]:
    """Memory per instance at the most instances run: the instances' own PSS and their helpers',
    both counted, and their sum per instance."""
    d = measured(df[df["part"] == "density"])
    rows = []
    for rt, g in d.groupby("runtime"):
        top = g[g["n"] == g["n"].max()]
        own = top[top["metric"] == "density_pss_total"]["value"].median()
        helpers = top[top["metric"] == "density_monitor_pss_total"]["value"].median()
        n = int(top["n"].iloc[0])
        rows.append((rt, n, own, 0.0 if pd.isna(helpers) else helpers))
    rows.sort(key=lambda r: (r[2] + r[3]) / r[1])
    parts = [f"{rt} {mib((own + h) / n)} ({mib(own / n)} instance + {mib(h / n)} helper)"
             for rt, n, own, h in rows if pd.notna(own)]
    if not parts:
        return []
    return [f"With the most idle instances run at once, memory per instance, counting each instance and its "
            f"helper (daemons apart, once): " + "; ".join(parts) + "."]


def _phase(df: pd.DataFrame, runtime: str) -> pd.Series:
    rows = measured(df[(df["part"] == "startup") & (df["metric"] == "phase") & (df["runtime"] == runtime)])
    return rows.groupby("component")["value"].median()


def vm_start_sentences(df: pd.DataFrame) -> list[str]:
    """How much of each VM's launch-to-exit went before the guest's init ran (QEMU starting and the
    guest kernel booting: phase ``init``), and how much the command and the power-off took."""
    total = _median_by(df, "startup", "launch_to_exit")
    text = []
    for vm in df[(df["kind"] == "vm") & (df["part"] == "startup")]["runtime"].unique():
        ph = _phase(df, vm)
        if vm not in total or "init" not in ph:
            continue
        boot = ph["init"] - ph.get("prepare", 0.0)  # 'prepare' ends at QEMU's launch
        text.append(f"Of the {vm} VM's **{total[vm]:.2f} s** from request to exit, **{boot:.2f} s "
                    f"({boot / total[vm]:.0%})** passed between QEMU's launch and the guest's init starting: "
                    f"QEMU starting and the guest kernel booting (from the end of phase `prepare` to `init`)"
                    + (f"; the command ran and the guest powered off in the last {total[vm] - ph['command']:.2f} s"
                       if "command" in ph else "") + ".")
    return text


def kernel_sentence(df: pd.DataFrame) -> str:
    """How much of a VM's start is its guest kernel's configuration rather than virtualization, from a
    study with ``kernels=["kit", "distro"]``: each kernel's median launch_to_exit and boot (phase ``init``
    after ``prepare``), the kit's as a share of the distribution's; '' without both kernels' rows."""
    if "kernel" not in df.columns:
        return ""
    rows = labelled(df[(df["part"] == "startup") & (df["kernel"].fillna("").astype(str) != "")])
    total = _median_by(rows, "startup", "launch_to_exit")
    own = [r for r in total.index if r.endswith("/kit")]
    other = [r for r in total.index if r.endswith("/distro")]
    if not own or not other:
        return ""
    a, b = own[0], other[0]
    boot = {r: _phase(rows, r) for r in (a, b)}
    boots = {r: ph["init"] - ph.get("prepare", 0.0) for r, ph in boot.items() if "init" in ph}
    return (f"With the kit's own minimal kernel the VM went from request to exit in **{_ms_or_s(total[a])}**, "
            f"**{total[a] / total[b]:.0%}** of the **{_ms_or_s(total[b])}** it took with the distribution's kernel "
            f"in the same run: **{_ms_or_s(total[b] - total[a])}** of a VM's start here is its guest kernel's "
            "configuration, not virtualization"
            + (f" (QEMU's launch to the guest's init: {_ms_or_s(boots[a])} against {_ms_or_s(boots[b])})"
               if len(boots) == 2 else "") + ".")


def docker_gap_sentence(df: pd.DataFrame, docker: str = "docker", oci: str = "runc") -> str:
    """Where Docker's start goes beyond runc's (which it runs underneath): its ``created`` to ``started``
    phases, dockerd asking containerd, which starts a shim that runs runc."""
    total = _median_by(df, "startup", "launch_to_exit")
    ph = _phase(df, docker)
    if docker not in total or oci not in total or not {"created", "started"} <= set(ph.index):
        return ""
    gap = ph["started"] - ph["created"]
    return (f"Docker runs runc underneath, yet took **{total[docker] * 1e3:.0f} ms** from request to exit against "
            f"runc's **{total[oci] * 1e3:.0f} ms** alone. Docker's phases say where: **{gap * 1e3:.0f} ms** "
            f"between `created` and `started` (dockerd asks containerd, which starts a containerd-shim, which runs "
            f"runc) and {ph['created'] * 1e3:.0f} ms before `created` (the API call, the image check, the "
            "container's record); medians of each, so they need not add up to the whole.")


def baseline_sentence(command: str, image_rootfs: Path) -> str:
    """What the bare-process baseline runs (the host's binary) against what the containers run (the
    image's): named from the files themselves."""
    host = shutil.which(command) or command
    inside = image_rootfs / "bin" / command
    theirs = os.path.basename(os.path.realpath(inside)) if os.path.lexists(inside) else "(not in the image)"
    if os.path.islink(inside):
        theirs = Path(os.readlink(inside)).name
    return (f"The bare process (`process`) runs the host's own `{command}` ({os.path.realpath(host)} "
            f"on this machine's root), not the image's `/bin/{command}` (→ `{theirs}`) that every "
            "other runtime runs: it is the baseline of isolation's cost, with other software and the host's "
            "shared libraries, not the same program.")


_HYPERVISOR = re.compile(r"kvm_pvm|Assertion|kvm_buf_set_msrs|failed under -accel kvm", re.I)


def accel_sentence(accel: str, reason: str, virtualised: str = "") -> str:
    """Why VMs run under this accelerator, in words: QEMU's own message stays in the environment record."""
    if accel == "kvm":
        return "VMs run with **KVM**: the guest's instructions run on the CPU directly."
    if not accel:
        return f"No VM runtime is usable here: {reason}."
    why = ("this machine is itself a virtual machine" + (f" ({virtualised})" if virtualised else "")
           + ", and its nested KVM could not run a normal guest: QEMU stopped on its first start with KVM"
           if _HYPERVISOR.search(reason) else reason.rstrip("."))
    return (f"VMs run with accelerator **{accel}** here: {why} (QEMU's message is in the saved environment record, "
            "`vm_accel_reason`). Under **TCG** QEMU emulates the guest's CPU in software, so every VM time "
            "measured here is the emulator's, not what a host with KVM would show.")


#: Properties an instance reads from /proc/self/status: with a kernel of its own that is its kernel's view.
OWN_KERNEL_VIEW = ("seccomp filter", "capabilities reduced")


def isolation_matrix(iso: pd.DataFrame, symbols: dict) -> pd.DataFrame:
    """kit.verify's frame as its matrix (``symbols``: verdict to mark), with the cells read from
    /proc/self/status shown as ``n/a (own kernel)`` for runtimes with a kernel of their own."""
    own = set(iso[(iso["property"] == "separate kernel") & (iso["isolated"] == True)]["runtime"])  # noqa: E712
    sym = [("n/a (own kernel)" if r.runtime in own and r.property in OWN_KERNEL_VIEW
            else symbols[None if r.isolated is None or r.isolated != r.isolated else bool(r.isolated)])
           for r in iso.itertuples()]
    m = iso.assign(symbol=sym).pivot(index="property", columns="runtime", values="symbol")
    return m.reindex(index=list(dict.fromkeys(iso["property"])), columns=list(dict.fromkeys(iso["runtime"]))).fillna("")


def isolation_sentences(iso: pd.DataFrame) -> list[str]:
    """What kit.verify's matrix says: who shares the host's kernel, who lacks a seccomp filter (of
    those that share it) and what sharing the host's user namespace means."""
    def having(prop, verdict):
        return sorted(iso[(iso["property"] == prop) & (iso["isolated"] == verdict)]["runtime"])

    own_kernel = having("separate kernel", True)
    shared = sorted(set(iso["runtime"]) - set(own_kernel) - {"process"})
    text = []
    if shared:
        host = iso.loc[iso["property"] == "separate kernel", "host"].iloc[0]
        text.append(f"These share the host's kernel ({host}): **{', '.join(shared)}**; a kernel bug reachable "
                    "from inside them reaches the host.")
    if own_kernel:
        text.append(f"A kernel of their own: **{', '.join(own_kernel)}** (gVisor's is the Sentry, in user space, "
                    "itself run under a host seccomp filter; a VM's is a whole guest kernel behind the hypervisor): "
                    "what they report of seccomp and capabilities is that kernel's view, hence n/a.")
    no_seccomp = [r for r in having("seccomp filter", False) if r not in own_kernel]
    if no_seccomp:
        text.append(f"No seccomp filter: {', '.join(no_seccomp)}.")
    same_users = [r for r in having("own user namespace", False) if r not in own_kernel and r != "process"]
    if same_users:
        text.append(f"No user namespace of their own: {', '.join(same_users)}: root inside is uid 0 on the host, "
                    "held in only by the other namespaces, the capabilities it lacks and seccomp.")
    return text


#: What a VM is asked to show of itself for :func:`vm_design_sentence`: its PID 1, that program, and
#: whether the guest kernel found any firmware tables (a microVM booted directly has none to speak of).
VM_PROBE = ["sh", "-c", "cat /proc/1/comm; readlink /proc/1/exe; ls /sys/firmware 2>/dev/null | wc -l"]


def vm_design_sentence(stdout: str, info: dict) -> str:
    """How the kit's VM boots, from one VM run of :data:`VM_PROBE` (its output and its result's info)."""
    lines = (stdout.split("\n") + ["?", "?", "?"])[:3]
    comm, exe, firmware = (s.strip() for s in lines)
    entry = {"pvh": "through its PVH entry point", "bzimage": "as a bzImage"}.get(info.get("kernel_entry", ""), "")
    return (f"The kit's VM is already a minimal one: QEMU's **{info.get('machine', '?')}** machine loads the guest "
            f"kernel ({info.get('kernel_kind', '?')} kernel `{info.get('kernel', '?')}`) itself {entry} (`-kernel`, "
            f"no bootloader), from an {info.get('boot', '?')}; the guest's PID 1 is `{comm}` (`{exe}`), a shell "
            f"script that starts the command, no systemd; the guest sees {firmware} firmware table entries "
            f"(/sys/firmware); {info.get('memory_mib', '?')} MiB of guest RAM, {info.get('vcpus', '?')} vCPU.")


def _ms_or_s(v: float) -> str:
    return f"{v * 1e3:.0f} ms" if v < 1 else f"{v:.1f} s"


def startup_sentences(df: pd.DataFrame, workload: str, accel: str = "") -> list[str]:
    """The startup order of every runtime, and each kind against the fastest container (medians of
    launch_to_exit); a VM's ratio under TCG is said to be the emulator's."""
    start = _median_by(df, "startup", "launch_to_exit")
    if start.empty:
        return []
    kinds = df.drop_duplicates("runtime").set_index("runtime")["kind"]
    of = {k: [r for r in start.index if kinds.get(r) == k] for k in ("process", "container", "sandbox", "vm")}
    text = [f"Median time from launch to exit of `{workload}`: "
            + " < ".join(f"{r} ({_ms_or_s(start[r])})" for r in start.sort_values().index) + "."]
    if not of["container"]:
        return text
    fast = min(of["container"], key=start.get)
    if "process" in start:
        text.append(f"The fastest container ({fast}, {_ms_or_s(start[fast])}) took {start[fast] / start['process']:.0f}x "
                    f"as long as the bare process ({start['process'] * 1e3:.1f} ms).")
    for sb in of["sandbox"]:
        text.append(f"The gVisor sandbox ({sb}) took {start[sb] / start[fast]:.1f}x as long as {fast}.")
    for vm in of["vm"]:
        text.append(f"The VM ({vm}) took {start[vm] / start[fast]:.0f}x as long as {fast} ({_ms_or_s(start[vm])})"
                    + (": **under TCG**, an emulated CPU, so this ratio is not comparable with a KVM host's "
                       "(see the reference figures above)." if accel == "tcg" else "."))
    return text


#: The verdict of a reference finding about VMs when they ran emulated: the run measured the emulator.
NOT_COMPARABLE = "not comparable here"


def findings_here(found: pd.DataFrame, accel: str) -> pd.DataFrame:
    """``study.findings()`` as they stand on this machine: without KVM, the VM finding measured
    TCG's emulator, not a hypervisor, so its verdict is :data:`NOT_COMPARABLE`, whatever the numbers."""
    out = found.copy()
    if accel != "kvm":
        vm = (out["key"] == "vm_latency") & (out["verdict"] != "not measured")
        out.loc[vm, "why"] = (f"VMs ran under {accel.upper() or 'no accelerator'}, QEMU emulating the CPU in software, "
                              "so this measured the emulator, not a hypervisor; the figures were: " + out.loc[vm, "why"])
        out.loc[vm, "verdict"] = NOT_COMPARABLE
    return out


def findings_summary(found: pd.DataFrame) -> str:
    """How many reference findings this run reproduced, did not, or could not judge: one sentence."""
    counts = found["verdict"].value_counts()
    order = ["reproduced", "not reproduced", "not enough runs", NOT_COMPARABLE, "not measured"]
    counts = counts.reindex([v for v in order if v in counts] + [v for v in counts.index if v not in order])
    return (f"Of {len(found)} reference findings, this run gave " + ", ".join(f"{v}: **{n}**" for v, n in counts.items())
            + (" (" + ", ".join(found[found.verdict == "reproduced"]["key"]) + " reproduced)"
               if "reproduced" in counts else "") + ".")


#: The reference for a restored microVM's start (pinned to the commit it was read from).
FIRECRACKER_SNAPSHOTS = ("https://github.com/firecracker-microvm/firecracker/blob/0151dbcd4f9703fdbc90abb3a295c4c446df5bf1/"
                         "docs/snapshotting/snapshot-support.md#performance")


def _restore_ms(df: pd.DataFrame) -> float:
    ph = df[(df["metric"] == "phase") & (df["runtime"] == "qemu") & (df["start"] == "snapshot")
            & (df["status"] == "ok") & ~df["warmup"].astype(bool)]
    ph = ph.pivot_table(index=["round", "repeat"], columns="component", values="value")
    return (ph["resumed"] - ph["restore"]).median() * 1000 if {"restore", "resumed"} <= set(ph.columns) else float("nan")


def warm_vm_sentence(df: pd.DataFrame, med: pd.DataFrame, kinds: dict, accel: str, failed: list[str]) -> str:
    """Where a VM restored from its template lands among the container starts (``med``: median ms,
    runtimes down, start modes across; ``kinds``: runtime to kind), with the labelled reference."""
    vm = med["snapshot"].get("qemu", float("nan")) if "snapshot" in med.columns else float("nan")
    if pd.isna(vm):
        return ("No VM was restored from a snapshot in this run"
                + (f": {failed[-1][:300]}" if failed else " (qemu not among the runtimes, or not available)") + ".")
    cold = med.loc["qemu", "cold"] if "cold" in med.columns else float("nan")
    boxes = {f"{rt} {s}": v for rt in med.index if kinds.get(rt) in ("container", "sandbox")
             for s, v in med.loc[rt].items() if pd.notna(v)}
    slower, faster = sorted(k for k, v in boxes.items() if v > vm), sorted(k for k, v in boxes.items() if v <= vm)
    text = (f"A VM restored from its template started `true` in **{vm:.0f} ms** (median), against {cold:.0f} ms for "
            f"a cold boot ({vm / cold:.0%} of it) with the **{accel}** accelerator. It is faster than {len(slower)} of "
            f"the {len(boxes)} container starts measured here" + (f" ({', '.join(slower)})" if slower else "") + "; "
            + (f"slower than {', '.join(faster)}." if faster else "faster than every one of them."))
    loading = _restore_ms(df)
    if pd.notna(loading):
        text += (f" Of its start, QEMU's own start up to the guest resumed from the template's state (phases "
                 f"`restore` -> `resumed`) took {loading:.0f} ms (median).")
    return text + (" *For reference, not measured here:* Firecracker's documentation gives a snapshot resume latency "
                   "target under 8 ms (5 ms p90) for a microVM with 2 vCPUs and 512 MB, one block and one network "
                   "device, on an AWS m5d.metal host with KVM ([snapshot-support.md](" + FIRECRACKER_SNAPSHOTS + ")).")


def writes_sentence(writes: pd.DataFrame, write_mib: float, image_before: int, image_after: int) -> str:
    """Where an instance's writes went (a :func:`kit.bench.persistence.where_writes_went` frame, one row
    per runtime, MiB): each instance's growth on the host's disk, whether the image's root filesystem
    (``image_before``/``image_after``, bytes) changed, what ``rm`` left, and for a VM what its guest saw:
    a write held in guest memory (tmpfs grew by at least 90 % of it, the host's disk by under 10 %).

    >>> writes_sentence(pd.DataFrame(columns=["runtime"]), 8, 0, 0)
    ''
    """
    if writes.empty:
        return ""
    text = (f"Each writer wrote **{write_mib} MiB**. Its instance grew by "
            + ", ".join(f"**{w.growth_mib:.1f} MiB** under {w.runtime}" for w in writes.itertuples())
            + f". The image's root filesystem stayed at **{mib(image_before)}** "
            + ("(unchanged)" if image_before == image_after else f"(now {mib(image_after)}: it changed!)")
            + ". After `rm`, "
            + ("nothing of any writer was left on disk." if not writes.state_left_after_rm.any()
               else "some state was left behind: " + ", ".join(writes[writes.state_left_after_rm].runtime)))
    for w in writes[writes.kind == "vm"].itertuples():
        in_ram = w.guest_tmpfs_growth_mib >= 0.9 * write_mib and w.growth_mib < 0.1 * write_mib
        text += (f"\n\nInside the **{w.runtime}** VM the root filesystem is `{w.guest_root_fs}`, and the guest's "
                 f"tmpfs pages (`Shmem` in its own `/proc/meminfo`) grew by **{w.guest_tmpfs_growth_mib:.1f} MiB** "
                 f"over an idle sibling VM, its used memory by **{w.guest_used_growth_mib:.1f} MiB**, while the "
                 f"VM grew **{w.growth_mib:.1f} MiB** on the host's disk. "
                 + ("So a kit VM's writable layer is guest memory: the file is held in the VM's RAM, not on the "
                    "host's disk." if in_ram else
                    "So this run did not find the file in the guest's memory: look at the table above."))
    return text
