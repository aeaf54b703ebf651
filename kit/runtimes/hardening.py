"""The baseline hardening Docker applies by default, for the runtimes that do not (runc, crun, LXC).

One list of refused system calls, two renderings of it:

- :func:`oci_seccomp` -> the OCI config's ``linux.seccomp`` (runc, crun);
- :func:`lxc_seccomp` -> an LXC version 2 ``denylist`` profile (``lxc.seccomp.profile``).

The list follows Docker's default profile (moby ``profiles/seccomp/default.json``) as it acts
on a container with Docker's default capabilities: every call that profile allows only with a
capability the container does not have (CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_BOOT, ...) or
never allows. Docker's profile is an allowlist; a denylist of the same calls is what runc and
LXC can load without knowing every syscall of every kernel, and gives the same answer to the
calls below. Where this differs from Docker: ``personality`` is allowed with every argument
(Docker allows only the common personas). ``ptrace``, ``process_vm_readv``/``writev`` and
``kcmp`` stay allowed, as Docker allows them on kernels >= 4.8.

Capabilities: :data:`DOCKER_CAPS` (LXC keeps exactly these when hardened; runc's own default
keeps fewer still). Masked ``/proc`` paths: :data:`MASKED_FILES` and :data:`MASKED_DIRS`.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from .._cache import building

#: Refused with EPERM: system calls Docker's default profile refuses to a container without
#: extra capabilities. Grouped by what they would let a container do.
DENIED_SYSCALLS: tuple[str, ...] = (
    # other kernels, modules, power
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "get_kernel_syms", "query_module", "reboot",
    # keyrings (not namespaced)
    "keyctl", "add_key", "request_key",
    # namespaces and mounts: a way out of the container's view
    "unshare", "setns", "mount", "umount", "umount2", "pivot_root", "mount_setattr",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
    # host-wide state: clock, swap, accounting, quotas, kernel log
    "settimeofday", "stime", "clock_settime", "clock_settime64", "swapon", "swapoff", "acct",
    "quotactl", "nfsservctl", "syslog", "vhangup",
    # kernel attack surface and information leaks
    "bpf", "perf_event_open", "userfaultfd", "lookup_dcookie", "open_by_handle_at",
    "name_to_handle_at", "iopl", "ioperm", "uselib", "ustat", "sysfs", "_sysctl",
    "vm86", "vm86old", "fanotify_init",
    # NUMA placement (Docker: only with CAP_SYS_NICE)
    "mbind", "get_mempolicy", "set_mempolicy", "move_pages",
)

#: clone(2) flags that create namespaces: a clone asking for any of them is refused (Docker
#: refuses them without CAP_SYS_ADMIN), one rule per flag, since a rule's conditions all must hold.
CLONE_NS_FLAGS: dict[str, int] = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

#: clone3(2) passes its flags in a struct a filter cannot read: like Docker, answer ENOSYS,
#: so that libc falls back to clone(2), whose flags the rules above see.
ENOSYS_SYSCALLS: tuple[str, ...] = ("clone3",)

#: The seccomp architectures of an x86-64 host: native, 32-bit and x32 calls all go through the
#: filter (with only the native one, a denied call made through the x32 ABI would slip by).
OCI_ARCHITECTURES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]

#: Docker's default capability set (``docker run`` without --cap-add/--cap-drop), LXC spelling.
DOCKER_CAPS: tuple[str, ...] = (
    "chown", "dac_override", "fsetid", "fowner", "mknod", "net_raw", "setgid", "setuid",
    "setfcap", "setpcap", "net_bind_service", "sys_chroot", "kill", "audit_write",
)

#: /proc files Docker masks (bind-mounts /dev/null over them).
MASKED_FILES: tuple[str, ...] = (
    "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
    "/proc/sched_debug",
)
#: /proc and /sys directories Docker masks (an empty read-only tmpfs over them).
MASKED_DIRS: tuple[str, ...] = ("/proc/acpi", "/proc/asound", "/proc/scsi", "/sys/firmware")


def oci_seccomp() -> dict:
    """``linux.seccomp`` for an OCI config: allow by default, refuse :data:`DENIED_SYSCALLS`."""
    eperm = {"action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}
    rules = [{"names": list(DENIED_SYSCALLS), **eperm}]
    rules += [{"names": ["clone"], **eperm,
               "args": [{"index": 0, "value": bit, "valueTwo": bit, "op": "SCMP_CMP_MASKED_EQ"}]}
              for bit in CLONE_NS_FLAGS.values()]
    rules.append({"names": list(ENOSYS_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": list(OCI_ARCHITECTURES), "syscalls": rules}


def lxc_seccomp() -> str:
    """The same policy as an LXC version 2 denylist profile (``lxc.seccomp.profile``).

    ``[all]`` applies the rules to every architecture LXC knows for this host (native, 32-bit,
    x32). A rule's argument condition is ``[index,value,op,mask]``.
    """
    lines = ["2", "denylist", "[all]"]
    lines += [f"{name} errno {errno.EPERM}" for name in DENIED_SYSCALLS]
    lines += [f"clone errno {errno.EPERM} [0,{bit:#x},SCMP_CMP_MASKED_EQ,{bit:#x}]"
              for bit in CLONE_NS_FLAGS.values()]
    lines += [f"{name} errno {errno.ENOSYS}" for name in ENOSYS_SYSCALLS]
    return "\n".join(lines) + "\n"


def lxc_profile_file(directory: Path) -> Path:
    """:func:`lxc_seccomp` as a file in ``directory``, named by its content and written once.

    Every hardened LXC container loads the same profile: a start costs one ``stat``, and a
    changed list gets a new file, never a half-written one (temp file, then rename).
    """
    text = lxc_seccomp()
    path = Path(directory) / f"lxc-seccomp-{hashlib.sha256(text.encode()).hexdigest()[:16]}.conf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with building(path, ".lxc-seccomp-") as (fd, _):
            with os.fdopen(fd, "w") as f:
                f.write(text)
    return path


def lxc_config_lines(profile_path) -> list[str]:
    """The LXC config keys of the baseline: the seccomp profile at ``profile_path``, Docker's
    capabilities kept (every other one dropped) and the masked /proc paths."""
    lines = [f"lxc.seccomp.profile = {profile_path}", f"lxc.cap.keep = {' '.join(DOCKER_CAPS)}"]
    # Targets are relative to the container's root; "optional": a path this kernel lacks is skipped.
    lines += [f"lxc.mount.entry = /dev/null {p.lstrip('/')} none bind,optional 0 0" for p in MASKED_FILES]
    lines += [f"lxc.mount.entry = tmpfs {p.lstrip('/')} tmpfs ro,nosuid,nodev,noexec,optional 0 0"
              for p in MASKED_DIRS]
    return lines
