"""The isolation matrix matches what each runtime is known to provide (issue 6).

Expectations, and why:
- process: nothing is isolated (it *is* the host), but a kit cgroup still enforces the memory limit.
- runc, lxc, docker: Linux namespaces (pid, mount, uts, ipc, net) of their own, a hostname of their own,
  fewer capabilities than the host's root, the memory limit enforced by the kernel's OOM killer,
  a read-only root when asked, and the host's kernel.
- docker additionally applies its default seccomp filter.
- runsc (gVisor): the Sentry is a kernel of its own in user space, so `uname -r` differs from the host's;
  processes and hostname are its own.
- qemu: a separate kernel, so everything is its own.
"""

import pytest

from kit import verify
from tests.conftest import need

LINUX_NS = ["own pid namespace", "own mnt namespace", "own uts namespace", "own ipc namespace", "own net namespace"]
CONTAINER = LINUX_NS + ["hostname independent", "host processes invisible", "capabilities reduced",
                        "memory limit enforced (32m, 100 MB asked)", "root filesystem read-only when asked"]
EXPECTED = {
    "process": ({"memory limit enforced (32m, 100 MB asked)"},
                set(LINUX_NS) | {"hostname independent", "host processes invisible", "separate kernel"}),
    "runc": (set(CONTAINER), {"separate kernel"}),
    "lxc": (set(CONTAINER), {"separate kernel"}),
    "docker": (set(CONTAINER) | {"seccomp filter"}, {"separate kernel"}),
    "runsc": ({"separate kernel", "hostname independent", "host processes invisible",
               "root filesystem read-only when asked"}, set()),
}


@pytest.mark.parametrize("runtime", list(EXPECTED))
def test_isolation_matrix(runtime):
    need(runtime)
    df = verify.verify(runtime).set_index("property")
    isolated, shared = EXPECTED[runtime]
    got = df.isolated.to_dict()
    wrong = {p: (got.get(p), df.observed.get(p), df.host.get(p)) for p in isolated if got.get(p) is not True}
    wrong.update({p: (got.get(p), df.observed.get(p), df.host.get(p)) for p in shared if got.get(p) is not False})
    assert not wrong, f"{runtime}: property -> (isolated, observed, host): {wrong}"


@pytest.mark.slow
def test_isolation_matrix_vm():
    need("qemu")
    df = verify.verify("qemu", memory_check=False).set_index("property")
    assert df.loc["separate kernel", "isolated"]
    assert df.loc["hostname independent", "isolated"]
    assert df.loc["host processes invisible", "isolated"]


def test_matrix_pivot():
    import pandas as pd

    df = pd.DataFrame([{"runtime": "a", "property": "p", "isolated": True},
                       {"runtime": "b", "property": "p", "isolated": False}])
    m = verify.matrix(df)
    assert m.loc["p", "a"] == "✓" and m.loc["p", "b"] == "✗"
