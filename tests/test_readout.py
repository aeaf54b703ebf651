"""kit.bench.readout: the sentences a notebook states say what they count, and compute it from the frame.

The frames here are small synthetic ones in the shape a study makes (a display test: the figures'
own measurement is tested with the bench); the sentences are checked for what they name and for the
numbers they must carry.
"""

from __future__ import annotations

import json

import nbformat
import pandas as pd
import pytest

from kit import report, verify
from kit.bench import readout

MIB = 2**20


def _row(runtime, kind, part, metric, value, component="", n=None, rnd=None):
    return {"part": part, "runtime": runtime, "kind": kind, "metric": metric, "value": float(value),
            "component": component, "n": n, "round": rnd, "repeat": 0, "warmup": False, "status": "ok"}


def _memory_frame():
    rows = [_row("runc", "container", "memory", "pss", 1.3 * MIB), _row("runc", "container", "memory", "monitor_pss",
                                                                       3.0 * MIB, "runc"),
            _row("docker", "container", "memory", "pss", 1.4 * MIB),
            _row("docker", "container", "memory", "monitor_pss", 11.9 * MIB, "containerd-shim-runc-v2"),
            _row("docker", "container", "memory", "daemon_pss", 80 * MIB, "dockerd"),
            _row("docker", "container", "memory", "daemon_pss", 40 * MIB, "containerd"),
            _row("qemu", "vm", "memory", "pss", 230 * MIB)]
    return pd.DataFrame(rows)


def test_memory_comparison_counts_the_helper_names_the_daemons_once_and_gives_both_ratios():
    costs = readout.memory_costs(_memory_frame())
    assert costs.loc["docker", "helper"] == 11.9 * MIB and costs.loc["docker", "daemons"] == 120 * MIB
    assert costs.loc["qemu", "helper"] == 0 and costs.loc["runc", "daemon_names"] == ""
    text = " ".join(readout.memory_sentences(costs))
    assert "instance's own processes plus its per-instance helper" in text
    # the VM against docker counts docker's shim: 230 / 13.3, not 230 / 1.4 (the 172x)
    assert f"**{230 / 13.3:.1f}x**" in text and f"**{13.3 / 230:.1%}**" in text
    assert f"{230 / 1.4:.0f}x" not in text
    assert "containerd, dockerd" in text and "counted once" in text and "120 MiB" in text
    assert f"**{230 / 133.3:.1f}x** a lone docker container with its daemons" in text
    assert "13 MiB (1.4 MiB instance + 12 MiB helper (containerd-shim-runc-v2))" in text


def test_density_counts_the_helpers_per_instance():
    rows = [_row("docker", "container", "density", m, v * MIB, n=n)
            for n, own, helper in ((1, 0.7, 2.5), (4, 2.8, 10.0))
            for m, v in (("density_pss_total", own), ("density_monitor_pss_total", helper))]
    (text,) = readout.density_sentences(pd.DataFrame(rows))
    assert "docker 3.2 MiB (0.7 MiB instance + 2.5 MiB helper)" in text and "daemons apart, once" in text


def _startup_frame():
    rows = []
    for rt, kind, total, phases in (("process", "process", 0.004, {}), ("runc", "container", 0.04, {}),
                                    ("docker", "container", 0.21, {"prepare": 0.007, "created": 0.05,
                                                                   "started": 0.19}),
                                    ("qemu", "vm", 2.08, {"prepare": 0.04, "init": 1.87, "command": 1.95})):
        rows.append(_row(rt, kind, "startup", "launch_to_exit", total, rnd=1))
        rows += [_row(rt, kind, "startup", "phase", v, c, rnd=1) for c, v in phases.items()]
    return pd.DataFrame(rows)


def test_startup_vm_boot_share_and_docker_gap_are_computed_from_the_phases():
    df = _startup_frame()
    (vm,) = readout.vm_start_sentences(df)
    assert "**2.08 s**" in vm and "**1.83 s (88%)**" in vm and "the guest kernel booting" in vm
    gap = readout.docker_gap_sentence(df)
    assert "**210 ms**" in gap and "runc's **40 ms**" in gap and "**140 ms** between `created` and `started`" in gap
    text = " ".join(readout.startup_sentences(df, "true", accel="tcg"))
    assert "process (4 ms) < runc (40 ms) < docker (210 ms) < qemu (2.1 s)" in text
    assert "not comparable" in text and "**under TCG**" in text
    assert "not comparable" not in " ".join(readout.startup_sentences(df, "true", accel="kvm"))
    assert readout.docker_gap_sentence(df[df.runtime != "docker"]) == ""


def test_the_kvm_failure_reads_as_a_sentence_not_qemu_output():
    raw = ("KVM (kvm_pvm) rejected: QEMU failed under -accel kvm: qemu-system-x86_64: ../../target/i386/kvm/kvm.c:"
           "3183: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.")
    text = readout.accel_sentence("tcg", raw, "hypervisor (cpuinfo flag)")
    assert "this machine is itself a virtual machine" in text and "nested KVM could not run a normal guest" in text
    assert "Assertion" not in text and "kvm.c" not in text and "accelerator **tcg**" in text
    assert "KVM" in readout.accel_sentence("kvm", "") and "/dev/kvm: no" in readout.accel_sentence("tcg", "/dev/kvm: no")


def test_the_baseline_names_the_host_binary_against_the_images(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "true").symlink_to("busybox")
    text = readout.baseline_sentence("true", tmp_path)
    assert "runs the host's own `true`" in text and "(→ `busybox`)" in text and "not the same program" in text


def test_vm_design_sentence_is_read_from_the_vm():
    info = {"machine": "microvm", "kernel_kind": "kit", "kernel": "kit-1", "kernel_entry": "pvh",
            "boot": "initramfs", "memory_mib": 256, "vcpus": 1}
    text = readout.vm_design_sentence("init\n/.kit/busybox\n0\n", info)
    assert "**microvm**" in text and "PVH" in text and "PID 1 is `init` (`/.kit/busybox`)" in text
    assert "0 firmware table entries" in text and "no systemd" in text


def test_isolation_cells_of_an_own_kernel_are_not_applicable_and_user_namespaces_are_explained():
    rows = []
    for rt, kind, own_kernel in (("runc", "container", False), ("runsc", "sandbox", True), ("qemu", "vm", True)):
        rows += [{"runtime": rt, "kind": kind, "property": "separate kernel", "host": "6.1", "isolated": own_kernel},
                 {"runtime": rt, "kind": kind, "property": "seccomp filter", "host": "off", "isolated": False},
                 {"runtime": rt, "kind": kind, "property": "own user namespace", "host": "", "isolated": False}]
    iso = pd.DataFrame(rows)
    m = readout.isolation_matrix(iso, verify.SYMBOLS)
    assert m.loc["seccomp filter", "runsc"] == m.loc["seccomp filter", "qemu"] == "n/a (own kernel)"
    assert m.loc["seccomp filter", "runc"] == "✗"
    text = " ".join(readout.isolation_sentences(iso))
    assert "No seccomp filter: runc." in text and "root inside is uid 0 on the host" in text
    assert "runsc" not in text.split("No seccomp filter")[1]


def test_report_hides_tagged_inputs_and_machine_paths(tmp_path):
    nb = nbformat.v4.new_notebook()
    shown = nbformat.v4.new_code_cell("print('visible code')")
    hidden = nbformat.v4.new_code_cell("text = 'HIDDEN_SOURCE'", metadata={"tags": [report.HIDDEN_INPUT]})
    hidden.outputs = [nbformat.v4.new_output("stream", text=f"saved in {tmp_path}/data/x.csv\n")]
    nb.cells = [shown, hidden]
    html = report.render_html(nb, tmp_path / "r.html", redact={str(tmp_path): "<report>"}).read_text()
    assert "visible code" in html and "HIDDEN_SOURCE" not in html
    assert "saved in &lt;report&gt;/data/x.csv" in html and str(tmp_path) not in html


@pytest.mark.parametrize("value", [json.dumps({"a": 1})])
def test_redaction_leaves_other_text_alone(value):
    assert report._redacted([value, "x /"], {"/tmp/q": "<r>"}) == [value, "x /"]


def test_a_vm_finding_under_tcg_is_not_comparable():
    found = pd.DataFrame([{"key": "vm_latency", "verdict": "reproduced", "why": "VM latency ÷ native: 3x"},
                          {"key": "cpu_memory", "verdict": "reproduced", "why": "ok"}])
    here = readout.findings_here(found, "tcg")
    assert here.set_index("key").verdict.to_dict() == {"vm_latency": "not comparable here", "cpu_memory": "reproduced"}
    assert "measured the emulator" in here.why[0] and "3x" in here.why[0]
    assert readout.findings_here(found, "kvm").verdict.tolist() == ["reproduced", "reproduced"]
    assert readout.findings_summary(here) == ("Of 2 reference findings, this run gave reproduced: **1**, not comparable "
                                              "here: **1** (cpu_memory reproduced).")


def test_the_warm_vm_is_placed_among_the_container_starts_with_its_reference_labelled():
    med = pd.DataFrame({"cold": [40.0, 3000.0], "precreated": [10.0, None], "snapshot": [None, 300.0]},
                       index=["runc", "qemu"])
    df = pd.DataFrame([{**_row("qemu", "vm", "startup", "phase", v, c, rnd=1), "start": "snapshot"}
                       for c, v in (("restore", 0.05), ("resumed", 0.25))])
    text = readout.warm_vm_sentence(df, med, {"runc": "container", "qemu": "vm"}, "tcg", [])
    assert "**300 ms**" in text and "3000 ms for a cold boot (10% of it)" in text
    assert "faster than 0 of the 2 container starts" in text and "slower than runc cold, runc precreated" in text
    assert "took 200 ms (median)" in text and "*For reference, not measured here:*" in text
    assert readout.warm_vm_sentence(df, med.drop(columns="snapshot"), {}, "tcg", ["boom"]).endswith(": boom.")


def test_kernel_sentence_compares_the_two_kernels_of_one_run():
    rows = []
    for kernel, totals, init in (("kit", (1.1, 1.2, 1.3), 0.9), ("distro", (4.0, 4.1, 4.2), 3.5)):
        for v in totals:
            rows.append({**_row("qemu", "vm", "startup", "launch_to_exit", v), "kernel": kernel})
        rows.append({**_row("qemu", "vm", "startup", "phase", 0.1, "prepare"), "kernel": kernel})
        rows.append({**_row("qemu", "vm", "startup", "phase", init, "init"), "kernel": kernel})
    rows.append({**_row("runc", "container", "startup", "launch_to_exit", 0.05), "kernel": ""})
    text = readout.kernel_sentence(pd.DataFrame(rows))
    # medians 1.2 s and 4.1 s: 29 %, 2.9 s of the start is the kernel's; boots 0.8 s against 3.4 s
    assert "**1.2 s**" in text and "**29%**" in text and "**4.1 s**" in text and "**2.9 s**" in text, text
    assert "800 ms against 3.4 s" in text, text
    assert readout.kernel_sentence(pd.DataFrame([r for r in rows if r["kernel"] != "distro"])) == ""
    assert readout.kernel_sentence(pd.DataFrame(rows).drop(columns="kernel")) == ""


def _writes_frame(vm_tmpfs_mib):
    return pd.DataFrame([
        {"runtime": "runc", "kind": "container", "growth_mib": 8.1, "state_left_after_rm": False},
        {"runtime": "qemu", "kind": "vm", "growth_mib": 0.0, "state_left_after_rm": False, "guest_root_fs": "tmpfs",
         "guest_tmpfs_growth_mib": vm_tmpfs_mib, "guest_used_growth_mib": 8.3}])


def test_writes_sentence_names_each_growth_in_mib_and_where_a_vm_kept_the_file():
    text = readout.writes_sentence(_writes_frame(8.0), 8, 5 * MIB, 5 * MIB)
    assert "Each writer wrote **8 MiB**" in text and "**8.1 MiB** under runc" in text and "**0.0 MiB** under qemu" in text
    assert "stayed at **5.0 MiB** (unchanged)" in text and "nothing of any writer was left" in text
    assert "Inside the **qemu** VM the root filesystem is `tmpfs`" in text and "writable layer is guest memory" in text
    assert " MB" not in text and "KB" not in text  # MiB throughout
    # a VM whose guest memory did not take the write is not said to hold it, and a changed image is said
    other = readout.writes_sentence(_writes_frame(0.5), 8, 5 * MIB, 6 * MIB)
    assert "did not find the file in the guest's memory" in other and "it changed!" in other
    assert "runc" not in readout.writes_sentence(_writes_frame(8.0).iloc[1:], 8, MIB, MIB)


def test_the_services_figure_shows_the_frame_s_figures_with_units_and_log_axis():
    import matplotlib

    matplotlib.use("Agg")
    from kit.bench import plots, services

    results = pd.DataFrame([
        ["redis", "process", "process", 0.05, 3.0, 4.0, "", "", ""],
        ["redis", "qemu", "vm", 9.0, 240.0, 250.0, "", "tcg", "no /dev/kvm"]], columns=list(services.COLUMNS))
    fig = plots.services(results, "lab1")
    start, memory = fig.axes
    assert [p.get_height() for p in start.patches] == [0.05, 9.0] and start.get_yscale() == "log"
    assert "log scale" in start.get_ylabel() and "MiB" in memory.get_ylabel()
    assert [p.get_height() for p in memory.patches] == [3.0, 240.0, 4.0, 250.0]  # idle, then peak
    assert fig._suptitle.get_text() == "Redis and MariaDB on lab1 (VM accelerator: tcg)"
