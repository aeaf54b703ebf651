"""``python -m kit.demo``: ``echo hello`` in every runtime available here, as a table.

This is what ``make demo`` runs until the full containers-vs-VMs study report exists.
"""

from __future__ import annotations

import sys
import time

import pandas as pd

import kit


def main() -> int:
    avail = kit.runtimes.available()
    print("Runtimes on this machine:")
    print(avail[["name", "kind", "available", "version", "reason"]].to_string(index=False))
    rows = []
    for name in avail[avail.available].name:
        t0 = time.perf_counter()
        try:
            r = kit.run("busybox", ["echo", "hello"], runtime=name, timeout=120)
            rows.append({"runtime": name, "exit_code": r.exit_code, "stdout": r.stdout.strip(),
                         "wall_ms": round((time.perf_counter() - t0) * 1000, 1),
                         "note": r.info.get("accel", "")})
        except kit.KitError as e:
            rows.append({"runtime": name, "exit_code": None, "stdout": "", "wall_ms": None, "note": str(e)})
    print("\necho hello, once per runtime (wall time includes set-up and teardown):")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
