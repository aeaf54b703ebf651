"""The kit as an ordinary user (issue 15): rootless runc, gVisor and LXC, Docker through the docker
group, limits refused with their reason, exact reasons for what cannot run rootless, nothing left behind.

Run as root (as CI is): :file:`scripts/rootless-user` makes the user ``kituser`` (subordinate IDs,
docker group) and a venv it can run, one per checkout; each test then runs a short Python script as that user
(``runuser``), with the user's own ``HOME`` and ``KIT_HOME``, and reads a JSON line it prints.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from kit import cgroups
from kit._proc import wait_until

USER = "kituser"
REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "rootless-user"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="these tests create an ordinary user: run them as root")


@pytest.fixture(scope="module")
def py():
    """The user's python (made once by scripts/rootless-user; cheap when it exists)."""
    p = subprocess.run([str(SCRIPT), USER], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().splitlines()[-1]


def _env(home: str) -> list[str]:
    return ["env", "-i", f"HOME={home}", f"KIT_HOME={home}/.cache/kit", "PATH=/usr/local/bin:/usr/bin:/bin",
            f"USER={USER}", "LANG=C.UTF-8"]


def as_user(py: str, code: str, timeout: float = 60, groups: bool = True, popen: bool = False):
    """Run ``code`` as the user; return the JSON its last stdout line holds (or the Popen)."""
    home = f"/home/{USER}"
    # runuser gives the user's groups (docker); setpriv --clear-groups none, as a user outside them.
    who = ["runuser", "-u", USER, "--"] if groups else \
        ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", "--"]
    argv = [*who, *_env(home), py, "-c", textwrap.dedent(code)]
    if popen:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/tmp")
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/tmp")
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_the_users_venv_where_the_checkout_is_unreadable():
    """CI's clone may sit where the user cannot read (under /root): the venv then holds links to the
    project's packages and a copy of the kit's source. Forced here, so it runs wherever the clone is."""
    p = subprocess.run([str(SCRIPT), USER, "copy"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    py = p.stdout.strip().splitlines()[-1]
    got = as_user(py, """
        import json, kit, yaml, psutil
        r = kit.run("busybox", ["echo", "copied"], runtime="process")
        print(json.dumps({"kit": kit.__file__, "yaml": yaml.__file__, "out": r.stdout}))
    """)
    venv = str(Path(py).parent.parent.parent)
    assert got["kit"] == f"{venv}/deps/src/kit/__init__.py", (got, venv)  # not the checkout's
    assert got["yaml"].startswith(f"{venv}/deps/site-packages/"), got
    assert got["out"] == "copied\n", got


def _state(*paths: Path) -> list:
    """What could change of root's files and directories: names, owners, modes, sizes, contents, times."""
    out = []
    for top in paths:
        for p in [top, *sorted(top.rglob("*"))]:
            st = p.lstat()
            out.append((str(p), st.st_uid, st.st_mode, st.st_size, st.st_mtime_ns,
                        p.read_bytes() if p.is_file() else None))
    return out


def test_symlinks_the_user_plants_redirect_no_root_write(py, tmp_path):
    """scripts/rootless-user runs as root. The user plants symlinks to root's files wherever the script
    once wrote in the user's home (its venvs lived in ~/.kit-venvs: a lock, a repo file, the venv, the
    copied packages), then makes ~/.kit-venvs itself a link to a directory of root's: root's files are
    untouched, the script still gives a venv that runs the kit, and every directory it writes in is root's
    alone (no component the user could swap for a link)."""
    home = Path(f"/home/{USER}")
    # Root's: /tmp/pytest-of-root is closed to the user, but a symlink reaches it all the same.
    canary = tmp_path / "canary"
    canary.write_text("root's own\n")
    canary.chmod(0o600)
    rootdir, rootdir2 = tmp_path / "rootdir", tmp_path / "rootdir2"
    for d in (rootdir, rootdir2):
        d.mkdir(mode=0o700)
        (d / "f").write_text("root's\n")
    before = _state(canary, rootdir, rootdir2)
    keys = " ".join(hashlib.sha256(f"{REPO} {m}".encode()).hexdigest()[:12] for m in ("auto", "copy"))
    plant = f"""set -e
        cd
        # root's venvs of an older script, which the user cannot empty, but can move aside
        if [ -e .kit-venvs ] || [ -L .kit-venvs ]; then mv .kit-venvs .kit-venvs.aside.$$; fi
        mkdir .kit-venvs
        for k in {keys}; do
          ln -s {canary} .kit-venvs/$k.lock
          mkdir .kit-venvs/$k
          ln -s {canary} .kit-venvs/$k/repo
          ln -s {rootdir} .kit-venvs/$k/venv
          ln -s {rootdir} .kit-venvs/$k/deps
        done"""

    def as_the_user(script: str) -> None:
        p = subprocess.run(["runuser", "-u", USER, "--", "sh", "-c", script], capture_output=True, text=True,
                           timeout=30)
        assert p.returncode == 0, p.stderr

    try:
        as_the_user(plant)
        pythons = []
        for mode in ("auto", "copy"):
            p = subprocess.run([str(SCRIPT), USER, mode], capture_output=True, text=True, timeout=300)
            assert p.returncode == 0, p.stderr
            pythons.append(p.stdout.strip().splitlines()[-1])
        assert _state(canary, rootdir, rootdir2) == before  # not written, truncated, chmod'ed or added to
        as_the_user(f"cd && mv .kit-venvs .kit-venvs.aside2.$$ && ln -s {rootdir2} .kit-venvs")  # all of it a link
        p = subprocess.run([str(SCRIPT), USER], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert _state(canary, rootdir, rootdir2) == before
        for python in pythons:  # the script still works
            got = as_user(python, "import json, kit; print(json.dumps(kit.run('busybox', ['echo', 'ok'], "
                                  "runtime='process').stdout))")
            assert got == "ok\n"
            venv_dir = Path(python).parents[2]  # DIR/venv/bin/python
            for d in [venv_dir, *venv_dir.parents]:
                st = d.lstat()
                assert st.st_uid == 0 and not st.st_mode & 0o022 and not d.is_symlink(), (d, oct(st.st_mode))
            theirs = [p for p in [venv_dir, *venv_dir.rglob("*")] if p.lstat().st_uid != 0]
            assert not theirs, theirs[:5]
        assert not [p for p in home.rglob("*") if p.lstat().st_uid == 0]  # root made nothing in the user's home
    finally:
        for p in home.glob(".kit-venvs*"):  # what the user planted (rmtree follows no link)
            if p.is_symlink():
                p.unlink()
            else:
                shutil.rmtree(p)


def test_runtimes_table_as_the_user_sees_it(py):
    got = as_user(py, """
        import json, kit
        t = kit.runtimes.available()
        docker = __import__("kit.images.engine", fromlist=["x"]).daemon_unreachable()
        print(json.dumps({"table": t.to_dict("records"), "docker_unreachable": docker}))
    """)
    rows = {r["name"]: r for r in got["table"]}
    # Rootless: runc and runsc (in the kit's user namespace), LXC (unprivileged, subordinate IDs),
    # Podman (with runc), Docker through the docker group, a process, and QEMU.
    for name in ("process", "runc", "runsc", "lxc", "docker", "podman", "qemu"):
        assert rows[name]["available"], (name, rows[name]["reason"])
    assert "mode=rootless" in rows["runc"]["details"]
    # What cannot run rootless here says exactly why.
    if cgroups.version() == 1:
        assert "hybrid mode not supported" in rows["crun"]["reason"], rows["crun"]
    if Path("/dev/kvm").exists() and not (os.stat("/dev/kvm").st_mode & 0o006):
        assert "cannot open it: add yourself to the kvm group" in rows["qemu"]["details"], rows["qemu"]
    print("\n".join(f"{r['name']:8} {r['available']!s:5} {r['reason']}" for r in got["table"]))


def test_docker_socket_permission_reason(py):
    """Outside the docker group, Docker's reason names the socket and the two ways in."""
    got = as_user(py, """
        import json, kit
        print(json.dumps(kit.runtimes.get("docker").availability().reason))
    """, groups=False)
    assert got == ("permission denied on /var/run/docker.sock: add your user to the docker group "
                   "(then log in again) or set DOCKER_HOST to a rootless daemon"), got


def test_rootless_runc_is_root_inside_and_the_user_outside(py):
    got = as_user(py, """
        import json, os, psutil, kit
        r = kit.run("busybox", ["id", "-u"], runtime="runc")
        h = kit.start("busybox", ["sleep", "60"], runtime="runc", name="owner")
        rt, inst = h.backend, h.state
        owners = sorted({psutil.Process(p).uids().real for p in rt.pids(inst)})
        root = str(rt.root)
        kit.rm("owner", force=True)
        mounts = open("/proc/self/mounts").read()
        print(json.dumps({"out": r.stdout, "code": r.exit_code, "owners": owners, "root": root,
                          "host_mount": str(inst.state_dir) in mounts,
                          "uid": os.getuid(), "rootfs": inst.info.get("rootfs")}))
    """)
    assert got["code"] == 0 and got["out"] == "0\n", got
    assert got["owners"] == [got["uid"]], got  # every host process of the container is the user's
    assert got["root"].startswith(f"/home/{USER}/"), got  # runtime state under the user's KIT_HOME
    # The overlay is mounted in the kit's user namespace, never on the host.
    assert got["rootfs"] == "overlay (in the kit's user namespace)" and not got["host_mount"], got


@pytest.mark.parametrize("runtime", ["runc", "runsc", "lxc"])
def test_rootless_service_port_exec_logs_stop_rm(py, runtime):
    got = as_user(py, f"""
        import json, http.client, kit
        name = "web-{runtime}"
        port = kit.free_port()
        kit.start("busybox", ["sh", "-c", "mkdir -p /www && echo hello > /www/index.html && echo up && "
                  "exec httpd -f -p 8080 -h /www"], runtime="{runtime}", name=name, ports=[f"{{port}}:8080"])

        def get():
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/index.html")
                return c.getresponse().read().decode()
            except OSError:
                return None

        body = kit.wait_until(get, 15, what="the rootless service")
        ex = kit.exec(name, ["id", "-u"])
        logs = kit.logs(name).stdout
        stopped = kit.stop(name, timeout=1)
        kit.rm(name)
        print(json.dumps({{"body": body, "exec": ex.stdout, "logs": logs, "ps": len(kit.ps()),
                          "stopped_exit": stopped.exit_code is not None}}))
    """)
    assert got == {"body": "hello\n", "exec": "0\n", "logs": "up\n", "ps": 0, "stopped_exit": True}, got


def test_limit_refused_with_its_reason(py):
    got = as_user(py, """
        import json, kit
        out = {}
        for rt in ("runc", "process", "docker"):
            try:
                kit.run("busybox", ["true"], runtime=rt, memory="64m")
                out[rt] = "ran"
            except kit.errors.LimitsUnavailable as e:
                out[rt] = str(e)
        print(json.dumps(out))
    """, timeout=120)
    if cgroups.version() == 1:  # no delegation on cgroup v1: refused, never run unlimited
        for rt in ("runc", "process"):
            assert got[rt].startswith(f"{rt}: cannot limit memory as {USER}: limits need a cgroup this user may write"), got
            assert "cgroup v1" in got[rt], got
    assert got["docker"] == "ran", got  # the daemon enforces its own limits, whoever asks


def test_the_runtimes_whose_limits_are_kit_cgroups():
    """Which runtimes' limits an ordinary user needs a writable cgroup for: declared by each runtime."""
    from kit import runtimes

    declared = {n for n in runtimes.names() if runtimes.get(n).limits_in_kit_cgroup}
    assert declared == {"process", "runc", "crun", "runsc", "lxc"}
    assert runtimes.get("docker").enforced_limits() == runtimes.get("qemu").enforced_limits() == "enforced"


def test_docker_through_group_membership(py):
    got = as_user(py, """
        import json, kit
        r = kit.run("busybox", ["echo", "via-docker"], runtime="docker")
        print(json.dumps(r.stdout))
    """, timeout=120)
    assert got == "via-docker\n"


def test_sigkill_of_the_users_python_leaves_nothing(py):
    """The user's reaper sweeps runc, runsc and LXC instances (two serving a port) of a killed session."""
    proc = as_user(py, """
        import json, sys, kit
        kit.start("busybox", ["sleep", "300"], runtime="runc", name="left-runc")
        kit.start("busybox", ["sleep", "300"], runtime="lxc", name="left-lxc")
        kit.start("busybox", ["httpd", "-f", "-p", "80"], runtime="runc", name="left-port",
                  ports=[f"{kit.free_port()}:80"])
        kit.start("busybox", ["httpd", "-f", "-p", "80"], runtime="runsc", name="left-runsc",
                  ports=[f"{kit.free_port()}:80"])
        print(kit.config.SESSION_ID, flush=True)
        sys.stdin = None
        import time; time.sleep(300)
    """, popen=True)
    session = None
    try:
        session = proc.stdout.readline().strip()
        assert session, proc.stderr.read() if proc.poll() is not None else "no session id"
        check = """
            import json, kit
            from kit import lifetime
            before = lifetime.leftovers("%s")
            print(json.dumps(before))
        """ % session
        before = as_user(py, check)
        for mark in ("left-runc", "(lxc-execute)", "left-port", "left-runsc"):  # LXC's instance shows as its process
            assert any(mark in x for x in before), (mark, before)
        for pid in [*_children(proc.pid), proc.pid]:  # the user's python (runuser's child) first
            os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        left = as_user(py, """
            import json, kit
            from kit import lifetime
            try:
                kit.wait_until(lambda: not lifetime.leftovers("%s"), 20, interval=0.2, what="the sweep")
            except kit.KitError:
                pass
            print(json.dumps(lifetime.leftovers("%s")))
        """ % (session, session))
        assert left == [], left
        print(f"rootless session {session} cleaned up within {time.monotonic() - t0:.1f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _children(pid: int) -> list[int]:
    """The user's python below ``pid``, not its reaper (``python -m kit.lifetime``): the reaper is what
    must outlive it and sweep (killing it too left the sweep to the next session's sweep of dead ones)."""
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)
                if c.name().startswith("python") and "kit.lifetime" not in c.cmdline()]
    except psutil.Error:
        return []


def test_a_study_as_the_user_records_rootless_and_measures_memory(py):
    got = as_user(py, """
        import json, kit
        from kit.bench import Study
        s = Study(image="busybox", runtimes=["runc"], workload="true", repeat=2, parts=["startup", "memory"],
                  progress=False)
        df = s.run()
        env = s.meta["environment"]
        ok = df[df.status == "ok"]
        pss = ok[(ok.part == "memory") & (ok.metric == "pss")].value.tolist()
        print(json.dumps({"privileges": env.get("privileges"), "limits": env.get("limits", {}).get("runc"),
                          "pss": pss, "failed": df[df.metric == "failed"].status.tolist()}))
    """, timeout=120)
    assert got["privileges"] == "rootless", got
    assert got["failed"] == [], got
    assert got["pss"] and got["pss"][0] > 100_000, got  # the container's own processes, found without a cgroup
    if cgroups.version() == 1:
        assert got["limits"].startswith("refused (limits need a cgroup this user may write"), got


def test_a_debian_image_build_says_it_needs_root(py):
    got = as_user(py, """
        import json, kit
        try:
            kit.images.debian("kit-rootless-probe", ["redis-server"])
            print(json.dumps("built"))
        except kit.errors.ImageError as e:
            print(json.dumps(str(e)))
    """)
    assert got.startswith("building 'kit-rootless-probe' needs root: debootstrap runs only as root"), got


def test_the_isolation_matrix_as_the_user(py):
    got = as_user(py, """
        import json, kit
        df = kit.verify("runc").set_index("property")
        print(json.dumps({p: [df.loc[p, "observed"], df.loc[p, "isolated"], df.loc[p, "note"]] for p in df.index}))
    """)
    assert got["own user namespace"][1] is True, got  # rootless: root inside is the user outside
    memory = got["memory limit enforced (OOM kill)"]
    if cgroups.version() == 1:  # refused with its reason, not a failed probe and not "enforced"
        assert memory[0] == "refused: no limit for this user here" and memory[1] is None, memory
        assert "limits need a cgroup this user may write" in memory[2], memory


def test_delegated_cgroup_v2_subtree(tmp_path):
    """Where limits go for an ordinary user on cgroup v2: the subtree systemd delegates, only when the
    kit runs inside it with memory and cpu available (a pure function of /proc/self/cgroup and the tree)."""
    from kit import cgroups

    unit = tmp_path / "user.slice" / "user-1001.slice" / "user@1001.service"
    (unit / "app.slice" / "run-1.scope").mkdir(parents=True)
    (unit / "cgroup.controllers").write_text("cpu io memory pids\n")
    inside = "0::/user.slice/user-1001.slice/user@1001.service/app.slice/run-1.scope\n"
    assert cgroups.delegated_cgroup(inside, tmp_path) == "user.slice/user-1001.slice/user@1001.service"
    session = "0::/user.slice/user-1001.slice/session-3.scope\n"  # a login shell: outside the delegation
    assert cgroups.delegated_cgroup(session, tmp_path) is None
    (unit / "cgroup.controllers").write_text("pids\n")  # memory and cpu not delegated
    assert cgroups.delegated_cgroup(inside, tmp_path) is None


def test_rootless_oci_config_leaves_the_user_namespace_to_the_launcher():
    from kit.runtimes import _rootless_oci
    from kit.runtimes.oci import build_config
    from kit.spec import RunSpec

    cfg = build_config(RunSpec(image="busybox", command=["true"], name="x"), None, "/r", "/kit/x")
    cfg = _rootless_oci.fit_config(cfg)
    assert {"type": "user"} not in cfg["linux"]["namespaces"]  # runc runs as root of the kit's namespace
    assert {"type": "network"} in cfg["linux"]["namespaces"]  # its own loopback, as for root
    sys_mount = next(m for m in cfg["mounts"] if m["destination"] == "/sys")
    assert sys_mount["type"] == "none" and "rbind" in sys_mount["options"]
    assert not any(o.startswith(("uid=", "gid=")) for m in cfg["mounts"] for o in m.get("options", []))
    assert "resources" not in cfg["linux"]
    argv = _rootless_oci.launcher(("lowerdir=/a,upperdir=/b,workdir=/c", "/m"), net=True)
    assert argv[:2] == ["unshare", "--user"] and "--mount" in argv and "--net" in argv
    assert argv[-3:] == ["lowerdir=/a,upperdir=/b,workdir=/c", "/m", "net"]  # data as arguments, not code
