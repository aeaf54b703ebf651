"""``python -m kit.images.prebuild``: build the images the notebooks and tests use, once.

``make setup`` calls it so the slow debootstrap builds happen at set-up time,
not in the middle of a test or a notebook. Cached: a second call returns at once.
"""

from __future__ import annotations

import sys
import time

from . import get
from .debian import choose_mirror, debian

#: name -> Debian packages
SERVICE_IMAGES = {
    "debian-redis": ["redis-server"],
    "debian-mariadb": ["mariadb-server"],
    # notebook 05's backend (Flask over Redis and MariaDB), and all three in one image for
    # "everything in one VM" (kit.compose colocation reuses a stored image with every package)
    "debian-backend": ["python3-flask", "python3-redis", "python3-pymysql"],
    "debian-stack": ["python3-flask", "python3-redis", "python3-pymysql", "redis-server", "mariadb-server"],
    # the load tools kit.bench.loads runs inside an instance (and the iperf3 server)
    "debian-bench": ["sysbench", "fio", "iperf3", "socat", "redis-tools"],
    # a cgroup v2 host booted as a VM (scripts/cgroup_v2_guest.py, tests/test_cgroup_v2_host.py): the kit's
    # own Python needs from Debian, the OCI runtimes, busybox for the kit's busybox image, and newuidmap
    # (uidmap) for rootless runs with the user's subordinate IDs
    "debian-cgroup2": ["python3", "python3-psutil", "python3-pandas", "python3-tqdm", "python3-pytest",
                       "python3-pytest-timeout", "runc", "crun", "busybox-static", "uidmap", "iproute2"],
}


def main() -> int:
    get("busybox")
    uri, origin = choose_mirror()
    print(f"Debian mirror: {uri} (from {origin})")
    for name, packages in SERVICE_IMAGES.items():
        t0 = time.monotonic()
        img = debian(name, packages=packages)
        print(f"{img.name}: {img.size / 1e6:.0f} MB ({time.monotonic() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
