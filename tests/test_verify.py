"""The isolation matrix matches what each runtime is known to provide (issues 6 and 9).

Every row of every runtime is asserted: True (isolated), False (shared with the host) or None
(not observable from inside, with a note saying why). Expectations, and why:
- process: nothing is isolated (it *is* the host); a read-only root cannot be asked of it (None);
  a kit cgroup still enforces the memory limit with an OOM kill.
- runc, crun, docker: Linux namespaces (pid, mount, uts, ipc, net) of their own, the host's user
  and (cgroup v1 here) cgroup namespaces, a hostname of their own, fewer capabilities than the
  host's root, a seccomp filter (the kit's baseline hardening; Docker's default), a read-only root
  when asked, an OOM kill under the memory limit, and the host's kernel.
- lxc: the same, and a cgroup namespace of its own (``cgroup:mixed``).
- runsc (gVisor): the Sentry is a kernel of its own, and its /proc/self/ns is its own numbering (or
  missing): pid, uts, mount and net are proven by what the instance sees (processes, hostname,
  root mount, interfaces); ipc, user and cgroup cannot be observed from inside (None). runsc
  ignores the OCI seccomp filter (no --oci-seccomp), so no filter is seen inside.
- qemu: a separate kernel, so every namespace is its own; the guest's root has every capability
  and no seccomp filter; its root is read-only when asked; the guest kernel's OOM killer counts.
"""

import pandas as pd
import pytest

import kit
from kit import verify
from tests.conftest import need

NS = [f"own {ns} namespace" for ns in verify.NAMESPACES]
PROPS = NS + ["host processes invisible", "hostname independent", "separate kernel", "capabilities reduced",
              "seccomp filter", "root filesystem read-only when asked", verify.MEMORY_ROW]


def _expect(isolated=(), shared=(), unobservable=()) -> dict:
    out = {p: True for p in isolated} | {p: False for p in shared} | {p: None for p in unobservable}
    assert sorted(out) == sorted(PROPS), "every property gets an expectation"
    return out


LINUX_OWN = ["own pid namespace", "own mnt namespace", "own uts namespace", "own ipc namespace", "own net namespace"]
CONTAINER_OWN = LINUX_OWN + ["host processes invisible", "hostname independent", "capabilities reduced",
                             "seccomp filter", "root filesystem read-only when asked", verify.MEMORY_ROW]
OCI = _expect(CONTAINER_OWN, ["own user namespace", "own cgroup namespace", "separate kernel"])
EXPECTED = {
    "process": _expect([verify.MEMORY_ROW], [p for p in PROPS if p not in (
        verify.MEMORY_ROW, "root filesystem read-only when asked")], ["root filesystem read-only when asked"]),
    "runc": OCI,
    "crun": OCI,
    "docker": OCI,
    "lxc": _expect(CONTAINER_OWN + ["own cgroup namespace"], ["own user namespace", "separate kernel"]),
    "runsc": _expect(["own pid namespace", "own mnt namespace", "own uts namespace", "own net namespace",
                      "host processes invisible", "hostname independent", "separate kernel",
                      "capabilities reduced", "root filesystem read-only when asked", verify.MEMORY_ROW],
                     ["seccomp filter"], ["own ipc namespace", "own user namespace", "own cgroup namespace"]),
    "qemu": _expect(NS + ["host processes invisible", "hostname independent", "separate kernel",
                          "root filesystem read-only when asked", verify.MEMORY_ROW],
                    ["capabilities reduced", "seccomp filter"]),
}


def _check(runtime: str, df) -> None:
    df = df.set_index("property")
    assert list(df.index) == PROPS
    got = {p: None if pd.isna(v) else bool(v) for p, v in df.isolated.items()}
    wrong = {p: (got[p], df.observed[p], df.host[p], df.note[p]) for p, want in EXPECTED[runtime].items()
             if got[p] is not want}
    assert not wrong, f"{runtime}: property -> (isolated, observed, host, note): {wrong}"
    for p in [p for p, v in got.items() if v is None]:
        assert df.note[p].startswith("not observable: "), (p, df.note[p])


@pytest.mark.parametrize("runtime", ["process", "runc", "crun", "lxc", "docker", "runsc"])
def test_isolation_matrix(runtime):
    need(runtime)
    _check(runtime, verify.verify(runtime))


@pytest.mark.slow
def test_isolation_matrix_vm():
    need("qemu")
    _check("qemu", verify.verify("qemu"))


def test_the_module_is_callable_as_documented():
    import kit.verify as module

    need("process")
    df = kit.verify("process", memory_check=False)
    assert module is verify and callable(module)
    assert list(df.property) == PROPS[:-1] and set(df.runtime) == {"process"}
    assert verify.matrix(df).shape == (len(PROPS) - 1, 1)


def test_matrix_shows_three_verdicts_and_leaves_unprobed_cells_empty():
    df = pd.DataFrame([{"runtime": "a", "property": "p", "isolated": True},
                       {"runtime": "b", "property": "p", "isolated": False},
                       {"runtime": "c", "property": "p", "isolated": None},
                       {"runtime": "a", "property": "q", "isolated": False}])
    m = verify.matrix(df)
    assert list(m.index) == ["p", "q"] and list(m.columns) == ["a", "b", "c"]
    assert list(m.loc["p"]) == ["✓", "✗", "?"]
    assert list(m.loc["q"]) == ["✗", "", ""]


def test_a_sentry_kernel_namespace_is_judged_by_what_is_seen():
    host = {f"ns_{ns}": f"{ns}:[40265318{i}]" for i, ns in enumerate(verify.NAMESPACES)}
    host |= {"procs": "100", "hostname": "vm", "root_mount": "ext4 /dev/vda", "netdevs": "eth0 lo"}
    inside = {"ns_pid": "pid:[158]", "ns_net": "net:[157]", "procs": "3", "hostname": "box",
              "root_mount": "9p none", "netdevs": "lo"}
    got = {ns: verify.own_namespace(ns, inside, host, "sentry")[0] for ns in verify.NAMESPACES}
    assert got == {"pid": True, "mnt": True, "uts": True, "net": True, "ipc": None, "user": None, "cgroup": None}
    # The same view, but sharing the host's hostname, root and interfaces: not isolated, or unknown.
    same = inside | {"hostname": "vm", "root_mount": "ext4 /dev/vda", "netdevs": "eth0 lo", "procs": "99"}
    got = {ns: verify.own_namespace(ns, same, host, "sentry")[0] for ns in ("pid", "mnt", "uts", "net")}
    assert got == {"pid": False, "mnt": False, "uts": False, "net": None}
    # On the host's kernel the links compare; an unreadable one is not observable.
    assert verify.own_namespace("ipc", {"ns_ipc": host["ns_ipc"]}, host, "host") == (False, "")
    assert verify.own_namespace("ipc", {}, host, "host")[0] is None


@pytest.mark.slow
@pytest.mark.parametrize("boot", ["initramfs", "disk"])
def test_vm_root_is_read_only_when_asked(boot):
    need("qemu")
    script = "touch /kit-w && echo root-writable; touch /tmp/kit-w && echo tmp-writable; echo done"
    ro = kit.run("busybox", ["sh", "-c", script], runtime="qemu", read_only=True, boot=boot)
    assert ro.stdout.split() == ["done"], (ro.stdout, ro.stderr)
    assert ro.stderr.count("Read-only file system") == 2, ro.stderr
    if boot == "initramfs":  # the mode the remount is for: writable unless asked
        rw = kit.run("busybox", ["sh", "-c", script], runtime="qemu", boot=boot)
        assert rw.stdout.split() == ["root-writable", "tmp-writable", "done"], (rw.stdout, rw.stderr)
