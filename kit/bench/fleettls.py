"""How a fleet's Dask connections are secured: TLS unless plaintext is asked for by name.

A Dask worker runs whatever pickled function reaches it, as the user that started it (root, for
the kit's runtimes), so whoever can talk to a plaintext scheduler or worker runs code there as
that user, and reads the study on the way. Hence:

- clusters the kit starts (``LocalCluster``, ``SSHCluster``) use TLS with credentials made for
  that cluster (``distributed.security.Security.temporary()``) or the ones given; even on
  127.0.0.1, which every local user can reach;
- a scheduler given by address: ``tls://`` needs the cluster's certificates (``security=``, or
  ``distributed.comm.tls`` in Dask's config); ``tcp://`` is accepted on loopback (127.0.0.0/8,
  ``localhost``, ``::1``) and refused elsewhere, unless ``insecure=True`` asks for plaintext, which
  prints a one-line warning;
- an SSHCluster's scheduler and workers get their certificate and key as files in a directory of
  their own (``/tmp/kit-fleet-RANDOM``, mode 0700, created exclusively over SSH and removed with
  the cluster), never on a command line that ``ps`` would show to the hosts' other users.

>>> choose(scheduler="tcp://127.0.0.1:8786")
False
>>> choose(hosts=["lab1", "lab2"])
True
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import secrets
import shlex
import sys
import weakref
from pathlib import Path

from ..errors import InvalidSpec, KitError

#: Address schemes whose connections distributed encrypts; every other one is plaintext.
TLS_SCHEMES = ("tls", "wss")

#: The credential files an SSHCluster's scheduler and workers read: file name -> Security field.
_FILES = {"ca.pem": "tls_ca_file", "scheduler.pem": "tls_scheduler_cert", "scheduler.key": "tls_scheduler_key",
          "worker.pem": "tls_worker_cert", "worker.key": "tls_worker_key"}

#: Dask config key of each Security field (what ``Security()`` reads on the hosts).
_CONFIG = {"tls_ca_file": "distributed.comm.tls.ca-file",
           "tls_scheduler_cert": "distributed.comm.tls.scheduler.cert",
           "tls_scheduler_key": "distributed.comm.tls.scheduler.key",
           "tls_worker_cert": "distributed.comm.tls.worker.cert", "tls_worker_key": "distributed.comm.tls.worker.key"}

#: Run on each SSH host by its Python: the private directory and the files, none of them through a
#: symlink someone planted (the name is random, mkdir is exclusive, and a directory that exists
#: already is used only when it is this user's and closed to others: the same host named twice).
_WRITE = """import json, os, stat, sys
d = sys.argv[1]
try:
    os.mkdir(d, 0o700)
except FileExistsError:
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        sys.exit(d + " exists and is not a private directory of this user")
for name, text in json.load(sys.stdin).items():
    fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
"""

_REFUSED = ("{what} {addr} is plaintext and not on this machine: whoever reaches it runs code on the workers; "
            "use a TLS scheduler (tls://, its certificates as security= or --tls-ca-file/--tls-cert/--tls-key) "
            "or ask for plaintext by name (insecure=True, --insecure)")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine's
    loopback. Only ``localhost`` is taken by name: other names are not resolved."""
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _scheme_host(address: str) -> tuple[str, str]:
    """(scheme, host) of a Dask address (``tcp`` when it names none, as distributed does)."""
    from distributed.comm.addressing import get_address_host, parse_address

    scheme, _ = parse_address(address)
    if scheme == "inproc":  # this process
        return scheme, "127.0.0.1"
    return scheme, get_address_host(address)


def plaintext_remote(address: str) -> bool:
    """Whether ``address`` is plaintext and off this machine: what needs ``insecure=True``."""
    scheme, host = _scheme_host(address)
    return scheme not in TLS_SCHEMES and not is_loopback(host)


def choose(scheduler: str | None = None, hosts: list[str] | None = None, *, security=None,
           insecure: bool = False) -> bool:
    """Whether a fleet's connections use TLS (the pure decision; :func:`warn` says the warning).

    Args:
        scheduler: the address of a running scheduler, if one is given.
        hosts: the SSH host names of an SSHCluster the kit starts, if any.
        security: credentials given by the caller (a ``Security``), or None.
        insecure: plaintext asked for by name.

    Returns:
        True for TLS. Clusters the kit starts: TLS unless ``insecure``. A given scheduler: its
        scheme says (plaintext is accepted on loopback, or anywhere with ``insecure``).

    Raises:
        InvalidSpec: a plaintext scheduler off this machine without ``insecure``, or options that
            contradict each other.
    """
    if insecure and security is not None:
        raise InvalidSpec("insecure=True and security= contradict each other: give one of them")
    if scheduler:
        scheme, host = _scheme_host(scheduler)
        if scheme in TLS_SCHEMES:
            return True
        if security is not None:
            raise InvalidSpec(f"security= is for a TLS scheduler (tls://...), and {scheduler} is plaintext")
        if not is_loopback(host) and not insecure:
            raise InvalidSpec(_REFUSED.format(what="scheduler", addr=scheduler))
        return False
    return not insecure


def warn(what: str) -> None:
    """The one line said when plaintext was asked for by name and leaves this machine."""
    print(f"kit fleet: warning: plaintext Dask connections ({what}, insecure=True): whoever can reach them "
          "reads the study and runs code on the workers", file=sys.stderr)


def client_security(scheduler: str, security=None):
    """The ``Security`` a client of the TLS scheduler ``scheduler`` connects with: ``security``, or
    Dask's config (``distributed.comm.tls.*``)."""
    from distributed.security import Security

    sec = security if security is not None else Security()
    if not (sec.tls_ca_file and sec.tls_client_cert):
        raise InvalidSpec(f"scheduler {scheduler} speaks TLS: give its CA and a client certificate (security="
                          "Security(tls_ca_file=..., tls_client_cert=..., tls_client_key=...), --tls-ca-file, "
                          "--tls-cert, --tls-key) or set distributed.comm.tls in Dask's config")
    return sec


def from_files(ca: str | None, cert: str | None, key: str | None = None):
    """A ``Security`` from certificate files, one certificate for every role (client, scheduler,
    workers), or None when none is given. ``key`` may be left out when ``cert`` holds it."""
    from distributed.security import Security

    if not (ca or cert or key):
        return None
    if not (ca and cert):
        raise InvalidSpec("TLS needs both --tls-ca-file and --tls-cert (and --tls-key unless the certificate "
                          "file holds the key)")
    for p in (ca, cert, key):
        if p and not Path(p).is_file():
            raise InvalidSpec(f"TLS file {p} does not exist")
    roles = {f"tls_{r}_{k}": v for r in ("client", "scheduler", "worker") for k, v in (("cert", cert), ("key", key))}
    return Security(require_encryption=True, tls_ca_file=ca, **roles)


#: Clients :func:`kit.bench.fleet.cluster` made with ``insecure=True`` (it warned then); weak, so a
#: client is forgotten with it.
_plaintext_allowed: weakref.WeakSet = weakref.WeakSet()


def allow_plaintext(client) -> None:
    """Let fleet runs through ``client`` use plaintext off this machine (the kit's cluster was asked
    for it with ``insecure=True``, and warned): :func:`check_client` accepts it."""
    _plaintext_allowed.add(client)


def check_client(client, insecure: bool = False) -> None:
    """Refuse a fleet run through ``client`` when its scheduler or a worker is plaintext off this
    machine, unless ``insecure`` (or the kit's cluster was asked for plaintext): nothing has been
    sent to a worker yet.

    Raises:
        InvalidSpec: a plaintext address off this machine without ``insecure``.
    """
    addrs = [client.scheduler.address, *client.scheduler_info(n_workers=-1)["workers"]]
    bad = [a for a in addrs if plaintext_remote(a)]
    if not bad:
        return
    if client in _plaintext_allowed:  # fleet.cluster(insecure=True) made it, and warned
        return
    if not insecure:
        raise InvalidSpec(_REFUSED.format(what="scheduler" if bad[0] == addrs[0] else "worker", addr=bad[0]))
    warn(", ".join(bad))


class RemoteCredentials:
    """The certificates of an SSHCluster the kit starts, as files on every host: written before the
    cluster starts (:meth:`write`), named in the Dask config the hosts inherit (:meth:`config`),
    removed after it stops (:meth:`remove`).

    Args:
        security: the cluster's ``Security``: its scheduler and worker certificates go to the hosts.
        targets: ``(host, asyncssh connect options)`` of every host, the scheduler's included.
        remote_python: the Python on the hosts.
    """

    def __init__(self, security, targets: list[tuple[str, dict]], remote_python: str | None = None):
        seen, self.targets = set(), []
        for host, opts in targets:
            k = (host, opts.get("port"), opts.get("username"))
            if k not in seen:
                seen.add(k)
                self.targets.append((host, opts))
        self.python = remote_python or sys.executable
        self.dir = f"/tmp/kit-fleet-{secrets.token_hex(8)}"
        self.files = {}
        for name, field in _FILES.items():
            value = getattr(security, field)
            if value:  # a certificate in memory (Security.temporary) or a file here
                self.files[name] = value if "\n" in value else Path(value).read_text()
        missing = [f for f in ("tls_ca_file", "tls_scheduler_cert", "tls_worker_cert") if not getattr(security, f)]
        if missing:
            raise InvalidSpec(f"security= for SSH hosts needs {', '.join(missing)}: the hosts' scheduler and "
                              "workers present them")

    def config(self) -> dict:
        """The Dask config that makes the hosts' ``Security()`` read these files and require TLS."""
        by_field = {field: f"{self.dir}/{name}" for name, field in _FILES.items() if name in self.files}
        return {"distributed.comm.require-encryption": True,
                **{key: by_field.get(field) for field, key in _CONFIG.items()}}

    def write(self) -> None:
        """Create the private directory and the files on every host."""
        argv = [self.python, "-c", _WRITE, self.dir]
        self._run(shlex.join(argv), json.dumps(self.files), "write the TLS credentials")

    def remove(self) -> None:
        """Remove the directory from every host (the key of a cluster that is gone). Runs while an
        error may be on its way out, so a host it cannot reach is said on stderr, not raised."""
        for e in self._run(f"rm -rf -- {shlex.quote(self.dir)}", None, "remove the TLS credentials", strict=False):
            print(f"kit fleet: {e}", file=sys.stderr)

    def _run(self, command: str, stdin: str | None, what: str, strict: bool = True) -> list[BaseException]:
        """Run ``command`` on every host at once; raise the first failure (``strict``) or return them all."""
        import asyncssh

        async def one(host: str, opts: dict) -> None:
            try:
                async with asyncssh.connect(host, **opts) as conn:
                    r = await conn.run(command, input=stdin, check=False)
            except (OSError, asyncssh.Error) as e:
                raise KitError(f"host {host}: cannot {what} over SSH: {type(e).__name__}: {e}") from None
            if r.exit_status != 0:
                err = (r.stderr or "").strip().splitlines()
                raise KitError(f"host {host}: cannot {what}: {err[-1] if err else f'exit {r.exit_status}'}")

        async def every() -> list:
            return await asyncio.gather(*(one(h, o) for h, o in self.targets), return_exceptions=True)

        # A thread of its own: asyncio.run refuses to start inside a running loop (Jupyter's).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            failed = [r for r in pool.submit(asyncio.run, every()).result() if isinstance(r, BaseException)]
        if failed and strict:
            raise failed[0]
        return failed
