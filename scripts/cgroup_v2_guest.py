"""A cgroup v2 host to test the kit on: a Debian guest booted by the kit under QEMU (issue 25).

The project's machines are cgroup v1 hybrid, where crun refuses to run and the kit's cgroup v2
paths (limits, OOM counts, delegation to an ordinary user) never run. Most users' hosts are pure
cgroup v2. This guest is one: the kit's own ``debian-cgroup2`` image (``make images`` builds it,
:data:`kit.images.prebuild.SERVICE_IMAGES`) booted by the kit's QEMU runtime (the checkout mounted
read-only by 9p at the same path), ``/sys/fs/cgroup`` mounted ``cgroup2`` with every controller
enabled below the root, and an ordinary user ``kit`` (uid 1000) given a delegated subtree laid out
as systemd lays out ``user@1000.service``.

It boots the kernel kit VMs boot by default: the kit's own minimal one (issue 23), which has 9p for
the checkout and ``bpf()`` with cgroup BPF, through which runc and crun attach their device rules on
cgroup v2; while that kernel is not built, Debian's generic one (the cloud one has no 9p).

One call starts it and runs a command in it::

    python scripts/cgroup_v2_guest.py cat /sys/fs/cgroup/cgroup.subtree_control
    python scripts/cgroup_v2_guest.py --user python3 -c 'import kit.cgroups as c; print(c.kit_rel())'

From Python (tests/test_cgroup_v2_host.py): ``with Guest() as g: g.run([...])``.
"""

from __future__ import annotations

import argparse
import secrets
import shlex
import sys
from pathlib import Path

import kit
from kit.images.prebuild import SERVICE_IMAGES

IMAGE = "debian-cgroup2"
CHECKOUT = Path(__file__).resolve().parent.parent
#: Where the checkout's volume is mounted in the guest before its set-up binds it at CHECKOUT's own path.
SHARED = "/.kit-checkout"
#: The ordinary user and the delegated subtree systemd would give it (what kit.cgroups.delegated_cgroup finds).
USER, UID = "kit", 1000
DELEGATED = f"user.slice/user-{UID}.slice/user@{UID}.service"
#: Where that user's commands run: a leaf of its subtree (cgroup v2 keeps processes out of inner groups
#: that hand controllers down), as a login through systemd's user manager would be.
USER_LEAF = f"{DELEGATED}/app.slice/kit-guest.scope"
#: The guest's files the kit writes (its KIT_HOME, the user's home, /run): tmpfs, because an overlay
#: (the guest's root) cannot be the upper layer of the kit's own container overlays.
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(CHECKOUT),
       "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
ROOT_ENV = {**ENV, "HOME": "/root", "KIT_HOME": "/var/lib/kit"}
USER_ENV = {**ENV, "HOME": f"/home/{USER}", "USER": USER, "LOGNAME": USER, "XDG_RUNTIME_DIR": f"/run/user/{UID}",
            "KIT_HOME": f"/home/{USER}/.cache/kit"}
READY = "kit-cgroup2-guest: ready"
BOOT_TIMEOUT = 300  # TCG, 2 vCPUs on a shared 2-core host: the boot itself takes ~10 s
#: The guest's set-up, run as its command (PID 1's child, as root): then it sleeps while commands are exec'd.
SETUP = f"""set -eu
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
# Every controller for the root's children, as systemd enables them on a cgroup v2 host.
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control; done
for d in /var/lib/kit /home /run /tmp; do mkdir -p "$d"; mount -t tmpfs -o mode=0755 tmpfs "$d"; done
chmod 1777 /tmp
# The checkout at its own path, bound after the tmpfs mounts: a clone under /tmp (git clone . /tmp/x)
# would otherwise be hidden by the guest's /tmp.
mkdir -p {shlex.quote(str(CHECKOUT))}
mount --bind {SHARED} {shlex.quote(str(CHECKOUT))}
useradd --create-home --uid {UID} --user-group --shell /bin/sh {USER}
grep -q '^{USER}:' /etc/subuid || echo '{USER}:100000:65536' >>/etc/subuid
grep -q '^{USER}:' /etc/subgid || echo '{USER}:100000:65536' >>/etc/subgid
install -d -o {USER} -g {USER} -m 0700 /run/user/{UID}
# The delegated subtree: memory, cpu and pids handed down to user@{UID}.service, which the user owns with
# the files the kernel lists as delegatable (cgroup.procs, cgroup.subtree_control, ...), not its own limits.
cd /sys/fs/cgroup
for g in user.slice user.slice/user-{UID}.slice; do mkdir "$g"; echo '+memory +cpu +pids' >"$g/cgroup.subtree_control"; done
mkdir -p {USER_LEAF}
chown {USER}:{USER} {DELEGATED}
for f in $(cat /sys/kernel/cgroup/delegate); do [ ! -e "{DELEGATED}/$f" ] || chown {USER}:{USER} "{DELEGATED}/$f"; done
chown -R {USER}:{USER} {DELEGATED}/app.slice
find /sys/fs/cgroup -mindepth 1 -type d | sort >/run/cgroups-at-boot
echo '{READY}'
exec sleep 2147483647
"""


class Guest:
    """The cgroup v2 guest: started on enter (one boot), removed on exit."""

    def __init__(self, memory: str = "1536m", cpus: int = 2):
        self.memory, self.cpus = memory, cpus
        self.inst: kit.Instance | None = None

    def __enter__(self) -> "Guest":
        kit.images.debian(IMAGE, packages=SERVICE_IMAGES[IMAGE])  # cached: built by make images
        self.inst = kit.start(IMAGE, ["sh", "-c", SETUP], runtime="qemu", name=f"cgroup2-{secrets.token_hex(3)}",
                              memory=self.memory, cpus=self.cpus, volumes=[f"{CHECKOUT}:{SHARED}:ro"])
        try:
            self.inst.wait_until(lambda: READY in self.inst.logs().stdout, BOOT_TIMEOUT, interval=0.5,
                                 what="the cgroup v2 guest's set-up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        inst, self.inst = self.inst, None
        if inst is not None:
            inst.rm(force=True)

    def run(self, argv: list[str], user: bool = False, timeout: float = 300) -> kit.RunResult:
        """Run ``argv`` in the guest (:func:`command`); its RunResult (exit code, output)."""
        return self.inst.exec(command(argv, user), timeout=timeout)


def command(argv: list[str], user: bool = False) -> list[str]:
    """The guest's argv that runs ``argv`` in the checkout, as root or (``user``) as the ordinary user from
    its delegated subtree's leaf, with :data:`ROOT_ENV` or :data:`USER_ENV` only."""
    env = [f"{k}={v}" for k, v in (USER_ENV if user else ROOT_ENV).items()]
    cmd = ["env", "-i", *env, *argv]
    if user:
        # Root moves the shell into the leaf first: leaving the root group takes write access to it.
        cmd = ["sh", "-c", f'echo $$ >/sys/fs/cgroup/{USER_LEAF}/cgroup.procs && exec "$@"', "sh",
               "setpriv", f"--reuid={UID}", f"--regid={UID}", "--init-groups", "--", *cmd]
    return ["sh", "-c", f"cd {shlex.quote(str(CHECKOUT))} && exec {shlex.join(cmd)}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--user", action="store_true", help=f"run as the ordinary user {USER!r} (a delegated subtree)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command to run in the guest")
    args = ap.parse_args(argv)
    with Guest() as g:
        r = g.run(args.command, user=args.user)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    return r.exit_code


if __name__ == "__main__":
    sys.exit(main())
