#!/usr/bin/env python3
"""Screenshot a rendered report with headless Chromium, to check that its figures show.

    python scripts/screenshot_report.py reports/2025-01-31-host/02-containers-vs-vms.html [-o shot.png]

Chromium runs with a fresh profile in a temporary directory (removed afterwards), no GPU,
no sandbox (we are root in a VM), no background networking, and every host name resolving
to nothing: the report is self-contained, and nothing here may reach a network.
Prints the PNG's path and a summary of its pixels (size, distinct colours).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def chromium() -> str:
    """The Chromium binary, or SystemExit saying how to install it."""
    for cand in (os.environ.get("CHROMIUM"), *CHROMIUM_CANDIDATES, shutil.which("chromium")):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise SystemExit("screenshot_report: no Chromium found: apt-get install chromium (or set CHROMIUM=/path)")


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 4000, timeout: float = 90) -> Path:
    """Render ``html`` headless into ``png`` (``width`` x ``height`` pixels); return ``png``.

    Raises:
        RuntimeError: Chromium failed, or wrote no image within ``timeout`` seconds.
    """
    html, png = Path(html).resolve(), Path(png).resolve()
    if not html.is_file():
        raise FileNotFoundError(f"no such report: {html}")
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    profile = tempfile.mkdtemp(prefix="kit-chromium-")
    argv = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars",
        # No name resolves: a stray remote <script> fails at once instead of reaching out.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={width},{height}",
        "--virtual-time-budget=5000", html.as_uri(),
    ]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err = b"", b""
    finally:
        # Chromium leaves helper processes (zygote, GPU, renderers) in its session: end them all.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)
    if not png.is_file() or png.stat().st_size == 0:
        tail = (err or out).decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"chromium wrote no screenshot of {html} (exit {proc.returncode}): {' | '.join(tail)}")
    return png


def colour_summary(png: Path) -> dict:
    """Size, number of distinct colours, and the share of pixels that are not near-white."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.int32)
    h, w, _ = a.shape
    flat = a.reshape(-1, 3)
    distinct = np.unique(flat[:, 0] << 16 | flat[:, 1] << 8 | flat[:, 2]).size
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    # Plots are what puts saturated colour on a notebook page: text and tables are grey on white.
    return {"width": w, "height": h, "distinct_colours": int(distinct),
            "non_white_share": round(float((lo < 235).mean()), 4),
            "saturated_share": round(float((hi - lo > 60).mean()), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html", type=Path, help="the report's .html file")
    p.add_argument("-o", "--output", type=Path, help="PNG to write (default: next to the HTML, .png)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=4000)
    p.add_argument("--timeout", type=float, default=90, help="seconds before Chromium is killed")
    args = p.parse_args(argv)
    out = args.output or args.html.with_suffix(".png")
    try:
        png = screenshot(args.html, out, args.width, args.height, args.timeout)
    except (RuntimeError, FileNotFoundError) as e:
        print(f"screenshot_report: {e}", file=sys.stderr)
        return 1
    print(png)
    try:
        print(colour_summary(png))
    except ImportError:  # Pillow is optional here; the screenshot itself is the deliverable
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
