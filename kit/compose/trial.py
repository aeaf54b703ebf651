"""One configuration of a compose stack, measured whole: up, first response, a bounded load, memory
(with the guest RAM a VM was given and the daemons its runtime keeps), disk, down; and the
sentences that compare configurations, each saying what it counts.

A stack's memory compared across configurations must count the same things: a VM's figure is
QEMU's, which holds the guest's RAM (its page cache included) and QEMU's own (TCG's translation
cache under TCG), while a container's leaves its page cache to the host and Docker's leaves out
its daemons. :func:`run` keeps those apart (``memory_mib``, ``monitors_mib``, ``daemons_mib``,
``guest_ram_mib``) so that :func:`sentences` can say which is which.

>>> sentences(pd.DataFrame())
[]
"""

from __future__ import annotations

import json
import time
import urllib.request

import pandas as pd

from .. import runtimes
from ..bench import footprint
from ..errors import KitError
from . import measure
from .stack import down, get, up

MIB = 2**20


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _daemons(runtime_names) -> float:
    rows = [r for rt in dict.fromkeys(runtime_names) for r in footprint.daemon_rows(rt)
            if r["metric"] == "daemon_pss"]
    return sum(r["value"] for r in rows)


def _figures(stack, url: str, requests: int, concurrency: int, since: float, timeout: float) -> tuple:
    first_s = measure.first_response(url, timeout=timeout, since=since)
    first = _get(url)
    load = measure.http_load(url, requests=requests, concurrency=concurrency)
    last = _get(url)
    mem, disk = measure.memory(stack), measure.disk(stack)
    units = get(stack).units
    mem["guest_ram_mib"] = [units[i].instance.info.get("memory_mib") for i in mem.instance]
    return first_s, first, load, last, mem, disk


def run(file, project: str, configuration: str, options: dict, environ: dict, url: str, *, requests: int,
        concurrency: int, timeout: float) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Bring the stack up as ``options`` say (kit.compose.up's arguments), measure it, take it down.

    Returns:
        The configuration's row (MiB and seconds), its per-instance memory and its disk frame.
    """
    t0 = time.time()
    stack = up(file, project=project, timeout=timeout, environ=environ, **options)
    try:
        first_s, first, load, last, mem, disk = _figures(stack, url, requests, concurrency, t0, timeout)
    finally:
        down(project)
    vm = mem.guest_ram_mib.notna()
    row = {"configuration": configuration, "first_response_s": first_s, **{k: load[k] for k in (
        "requests", "concurrency", "errors", "rps", "p50_ms", "p99_ms")},
        # NaN when an instance's figure is partial (measure.memory: its `partial` says why)
        "memory_mib": mem.pss.sum(skipna=False) / MIB, "monitors_mib": mem.monitor_pss.sum(skipna=False) / MIB,
        "daemons_mib": _daemons(mem.runtime) / MIB, "guest_ram_mib": float(mem.guest_ram_mib[vm].sum()),
        "vm_pss_mib": mem.pss[vm].sum() / MIB,
        "disk_images_mib": disk[disk.part == "image"].drop_duplicates("component").bytes.sum() / MIB,
        "disk_instances_mib": disk[disk.part == "instance"].bytes.sum() / MIB,
        "disk_volumes_mib": disk[disk.part == "volume"].drop_duplicates("component").bytes.sum() / MIB,
        "db_visits_first": first["db_visits"], "db_visits_last": last["db_visits"], "served_by": first["served_by"]}
    return row, mem.assign(configuration=configuration), disk.assign(configuration=configuration)


def run_all(file, project: str, configs: dict, environ: dict, url: str, *, strict: bool = False, **kw):
    """:func:`run` for each configuration in turn (one at a time: they must not compete for the CPUs).

    Returns:
        The results frame, the per-instance memory and disk frames (all configurations), and a
        sentence per configuration that failed (``strict``: raise instead).
    """
    rows, mems, disks, failures = [], [], [], []
    for conf, options in configs.items():
        try:
            row, mem, disk = run(file, project, conf, options, environ[conf], url, **kw)
        except (KitError, OSError) as e:
            if strict:
                raise
            failures.append(f"`{conf}`: {type(e).__name__}: {e}")
            continue
        rows.append(row)
        mems.append(mem)
        disks.append(disk)
    return (pd.DataFrame(rows), pd.concat(mems) if mems else pd.DataFrame(),
            pd.concat(disks) if disks else pd.DataFrame(), failures)


def _memory_sentence(r: pd.DataFrame) -> str:
    parts = []
    for c, x in r.iterrows():
        if pd.isna(x.memory_mib):
            parts.append(f"an unknown amount as {c} (a partial figure: see the table)")
            continue
        whole = x.memory_mib + x.monitors_mib
        s = f"**{whole:.0f} MiB** as {c} ({x.memory_mib:.0f} MiB instances + {x.monitors_mib:.0f} MiB helpers"
        s += f"; plus {x.daemons_mib:.0f} MiB of daemons shared by all its containers)" if x.daemons_mib else ")"
        parts.append(s)
    text = ("Counting each instance's own processes and its helper, with a runtime's daemons named apart, the "
            "whole stack took " + ", ".join(parts) + ".")
    for c, x in r[r.guest_ram_mib > 0].iterrows():
        text += (f" As {c}, the VM's QEMU held {x.vm_pss_mib:.0f} MiB for {x.guest_ram_mib:.0f} MiB of guest RAM: "
                 "what the guest touched, its own page cache included (a container's page cache is the host's, "
                 "outside its PSS), plus QEMU itself" + (" and TCG's translation cache." if x.vm_pss_mib > x.guest_ram_mib
                                                          else "."))
    return text


def sentences(results: pd.DataFrame, accel: str = "") -> list[str]:
    """What the configurations' results say, each figure from ``results`` (:func:`run_all`'s frame)."""
    if results.empty:
        return []
    r = results.set_index("configuration")
    fast, slow = r.first_response_s.idxmin(), r.first_response_s.idxmax()
    text = [f"The stack answered first as **{fast}** ({r.first_response_s[fast]:.1f} s after `up`) and last as "
            f"**{slow}** ({r.first_response_s[slow]:.1f} s)."]
    fresh = r.index[0]
    if r.db_visits_first[fresh] <= 2:  # first_response's request and the one after it: none before this up
        text.append(f"{fresh} came first, on an empty volume: its time includes `mariadb-install-db` creating the "
                    "database's system tables, which every later configuration found in the volume.")
    best = r.rps.idxmax()
    text.append(f"Under {r.requests.iloc[0]} requests from {r.concurrency.iloc[0]} clients, **{best}** served the "
                f"most ({r.rps[best]:.0f} requests/s, p99 {r.p99_ms[best]:.0f} ms); "
                + ", ".join(f"{c}: {r.rps[c]:.0f}/s, p99 {r.p99_ms[c]:.0f} ms" for c in r.index if c != best) + ".")
    if "runsc" in r.index and "runc" in r.index:
        text.append(f"runsc served {r.rps['runc'] / r.rps['runsc']:.1f}x fewer requests/s than runc: gVisor here runs "
                    f"on its **{getattr(runtimes.get('runsc'), 'platform', '?')}** platform, where every system "
                    "call of the backend and its databases stops the process and is answered by the Sentry.")
    text.append(_memory_sentence(r))
    text.append("On disk the images took " + ", ".join(f"{r.disk_images_mib[c]:.0f} MiB for {c}" for c in r.index)
                + " (shared by every instance of an image, counted once); each configuration's instances "
                + ", ".join(f"{r.disk_instances_mib[c]:.1f} MiB ({c})" for c in r.index) + " of their own; the "
                "volumes " + ", ".join(f"{r.disk_volumes_mib[c]:.0f} MiB ({c})" for c in r.index) + ", apart.")
    if accel == "tcg" and (r.guest_ram_mib > 0).any():
        text.append("The VMs ran under **TCG** (software emulation of the guest's CPU): their times are the "
                    "emulator's, not comparable with a KVM host's.")
    return text


def figure(results: pd.DataFrame, order, accel: str = ""):
    """The configurations side by side, one colour each in every panel: first response (log scale),
    throughput, p99 latency (p50 a black tick) and memory (instances, helpers, shared daemons, and
    a cross at the guest RAM a VM was given); MiB throughout."""
    import matplotlib.pyplot as plt

    colours = dict(zip(order, plt.get_cmap("tab10").colors))
    r = results
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    x, cs = list(r.configuration), [colours.get(c, "gray") for c in r.configuration]
    load = f"{r.requests.iloc[0]} GETs, {r.concurrency.iloc[0]} clients"
    for ax, col, label in zip(axes, ("first_response_s", "rps", "p99_ms"), (
            "s from up to the first 200 (log scale)", f"requests/s ({load})", "p99 latency, ms (p50: black tick)")):
        ax.bar(x, r[col], color=cs)
        ax.set_ylabel(label)
    axes[0].set_yscale("log")
    axes[2].scatter(x, r.p50_ms, marker="_", s=400, color="black", zorder=3)
    axes[3].bar(x, r.memory_mib, color=cs, label="instances (PSS)")
    axes[3].bar(x, r.monitors_mib, bottom=r.memory_mib, color=cs, hatch="..", alpha=0.5, label="helpers")
    axes[3].bar(x, r.daemons_mib, bottom=r.memory_mib + r.monitors_mib, color="white", edgecolor="gray", hatch="//",
                label="daemons (shared)")
    axes[3].scatter(x, r.guest_ram_mib.where(r.guest_ram_mib > 0), marker="x", color="black", zorder=3,
                    label="guest RAM given")
    axes[3].set_ylabel("MiB")
    axes[3].legend(fontsize=7)
    for ax, t in zip(axes, ("first response", "throughput", "latency", "memory")):
        ax.set_title(t)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("The same compose file, configured differently" + (
        f" (VMs under {accel.upper()}: software emulation)" if accel and accel != "kvm" else ""))
    fig.tight_layout()
    return fig
