"""Performance under load (issue 11): every load workload on every available runtime, interleaved,
relative to the bare process, plus the kit's port forwarder before (user-space copy) and after
(splice) on Redis. Writes benchmarks/results/load/: load.csv (every run, raw output apart),
relative.csv, summary.md and load.png.

    python benchmarks/bench_load.py [--repeat 3] [--seconds 5] [--runtimes process,runc,...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import kit  # noqa: E402
from kit.bench import loads, stats  # noqa: E402

OUT = Path(__file__).parent / "results" / "load"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--runtimes", default="")
    ap.add_argument("--loads", default=",".join(loads.LOADS))
    a = ap.parse_args()
    avail = kit.runtimes.available()
    rts = a.runtimes.split(",") if a.runtimes else [r for r, ok in zip(avail.name, avail.available) if ok]
    rows = loads.run(a.loads.split(","), rts, repeat=a.repeat, warmup=1, seconds=a.seconds,
                     progress=lambda s: print(s, flush=True))
    rows += loads.run(["fileio"], [r for r in rts if r != "qemu"], repeat=a.repeat, warmup=1, seconds=a.seconds,
                      volume=True)
    df = pd.DataFrame(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "raw").mkdir(exist_ok=True)
    df.drop(columns=["raw"], errors="ignore").to_csv(OUT / "load.csv", index=False)
    for i, r in df[df.get("raw").notna()].drop_duplicates(["runtime", "workload", "round"]).iterrows():
        (OUT / "raw" / f"{r.workload}-{r.runtime}-{r['round']}.txt").write_text(r.raw)
    df["n"], df["unit"] = 0, df["unit"].fillna("")
    df["warmup"] = df["warmup"].fillna(False)
    rel = []
    for (w, comp), g in df[df.metric == "throughput"].groupby(["workload", "component"]):
        r = stats.relative(g.assign(workload=f"{w}/{comp}"), metric="throughput")
        rel.append(r)
    rel = pd.concat(rel) if rel else pd.DataFrame()
    rel.to_csv(OUT / "relative.csv", index=False)
    p99 = df[df.metric.isin(["p99", "p95"]) & (df.status == "ok") & ~df.warmup.astype(bool)] \
        .groupby(["workload", "component", "runtime", "metric"]).value.median().unstack("metric")
    lines = ["# Performance under load", "", f"runtimes: {', '.join(rts)}; repeat {a.repeat}, {a.seconds:g} s each",
             "", rel.round(3).to_markdown(index=False) if len(rel) else "(no data)", "",
             p99.round(3).to_markdown() if len(p99) else ""]
    failed = df[df.metric == "failed"]
    lines += ["", "failed:"] + [f"- {r.workload} {r.runtime}: {r.status}" for r in failed.itertuples()]
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")
    if len(rel):
        fig, ax = plt.subplots(figsize=(12, 5))
        labels = sorted(rel.workload.unique())
        rtl = [r for r in rts if r in set(rel.runtime)]
        w = 0.8 / max(len(rtl), 1)
        for j, rt in enumerate(rtl):
            g = rel[rel.runtime == rt].set_index("workload").reindex(labels)
            x = [i + j * w for i in range(len(labels))]
            ax.bar(x, g.ratio, width=w, label=rt,
                   yerr=[(g.ratio - g.ratio_low).clip(lower=0), (g.ratio_high - g.ratio).clip(lower=0)])
        ax.axhline(1, color="k", lw=0.8)
        ax.set_xticks([i + 0.4 - w / 2 for i in range(len(labels))], labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("throughput relative to the bare process (95 % CI)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(OUT / "load.png", dpi=110)
    print((OUT / "summary.md").read_text())


if __name__ == "__main__":
    main()
