"""Live notebook controls: this kernel's instances, and a study's figures.

>>> import kit
>>> kit.widgets.instances()        # a live table: refreshed every 1.5 s, logs/stop/rm per row
>>> kit.widgets.explore(study)     # part, metric, runtimes, log scale, runs or summary

Each widget only displays: the work is done by :mod:`kit.api` (``ps``, ``logs``,
``stop``, ``rm``), the :class:`kit.Instance` handles (their PSS) and :class:`~kit.bench.Study`
(``summary``), through the plain functions below, which are tested without a browser.
A widget also carries a static rendering (``text/html``) in its display bundle, so a
report rendered without a kernel (nbconvert HTML, ``kit report``) shows a table or a
figure instead of a broken widget placeholder.
"""

from __future__ import annotations

import base64
import html
import io
import re
import threading
import time
import traceback

import ipywidgets as w

from . import api
from .errors import InstanceNotFound, InvalidSpec, KitError

#: The columns of :func:`instance_rows`, in display order.
COLUMNS = ("name", "runtime", "image", "state", "uptime", "ports", "memory")
_WIDTHS = {"name": "150px", "runtime": "70px", "image": "120px", "state": "90px", "uptime": "70px",
           "ports": "170px", "memory": "80px"}


# -- plain functions (what the widgets show) ---------------------------------------
def format_uptime(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h07m``, ``1d03h``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_bytes(n: float | None) -> str:
    """``812 KiB``, ``3.4 MiB``, ``1.20 GiB``; ``-`` for None."""
    if n is None:
        return "-"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KiB"
    if n < 1024 ** 3:
        return f"{n / 1024 ** 2:.1f} MiB"
    return f"{n / 1024 ** 3:.2f} GiB"


def _pss(handle) -> int | None:
    """The instance's own PSS (its monitor left out: :meth:`kit.Instance.memory`); None once it is gone
    or when a process of it cannot be read (a smaller figure would pass for the whole)."""
    try:
        return handle.memory()["pss"] or None
    except (KitError, OSError):  # gone between ps and now, or partial
        return None


def instance_rows(now: float | None = None, memory: bool = True) -> list[dict]:
    """One dict per instance of this kernel (:data:`COLUMNS`), as :func:`kit.ps` lists them.

    ``uptime`` is seconds since launch while running (None once exited); ``memory`` is the
    PSS in bytes of its host processes while running (None otherwise, or with ``memory=False``).
    An instance removed while the rows are being made is left out.
    """
    now = time.time() if now is None else now
    rows = []
    for rec in api.ps().to_dict("records"):
        try:
            handle = api.get(rec["name"])
        except InstanceNotFound:
            continue
        running = rec["status"] == "running"
        started = handle.phases.get("launched", handle.created_at)
        rows.append({"name": rec["name"], "runtime": rec["runtime"], "image": rec["image"],
                     "state": rec["status"], "uptime": now - started if running else None,
                     "ports": rec["ports"], "memory": _pss(handle) if running and memory else None})
    return rows


def display_row(row: dict) -> dict[str, str]:
    """A row of :func:`instance_rows` as the strings shown."""
    return {**{k: str(row.get(k) or "-") for k in COLUMNS}, "uptime": format_uptime(row.get("uptime")),
            "memory": format_bytes(row.get("memory"))}


def rows_html(rows: list[dict], caption: str = "") -> str:
    """The static table: what a report shows where no kernel runs."""
    e = html.escape
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{e(d[c])}</td>" for c in COLUMNS) + "</tr>"
                   for d in map(display_row, rows))
    if not rows:
        body = f"<tr><td colspan='{len(COLUMNS)}'>no instances</td></tr>"
    cap = f"<caption>{e(caption)}</caption>" if caption else ""
    return f"<table class='kit-instances'>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def rows_text(rows: list[dict]) -> str:
    """The same table as plain text."""
    shown = [tuple(display_row(r)[c] for c in COLUMNS) for r in rows]
    widths = [max([len(c)] + [len(s[i]) for s in shown]) for i, c in enumerate(COLUMNS)]
    lines = [COLUMNS] + shown
    return "\n".join("  ".join(v.ljust(widths[i]) for i, v in enumerate(line)).rstrip() for line in lines)


def tail(text: str, lines: int) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""


def describe_error(e: BaseException) -> str:
    """An error as the magics show it: ``KitTimeout: 'web' did not stop ...``."""
    return f"{type(e).__name__}: {e}"


def css_name(name: str) -> str:
    """A CSS class naming an instance's row (``kit-row-NAME``, other characters as ``_``)."""
    return "kit-row-" + re.sub(r"[^A-Za-z0-9_-]", "_", name)


# -- the live instances table ------------------------------------------------------
class _Row:
    """The widgets of one instance's row: a cell per column, then logs, stop and rm buttons."""

    def __init__(self, owner: "Instances", name: str):
        self.cells = {c: w.HTML(layout=w.Layout(width=_WIDTHS[c], overflow="hidden")) for c in COLUMNS}
        self.buttons = {}
        for what, style in (("logs", ""), ("stop", "warning"), ("rm", "danger")):
            b = w.Button(description=what, button_style=style, layout=w.Layout(width="56px"),
                         tooltip=f"{what} {name}")
            b.add_class(f"kit-{what}")
            b.on_click(lambda _b, what=what: owner.act(what, name))
            self.buttons[what] = b
        self.box = w.HBox(list(self.cells.values()) + list(self.buttons.values()))
        self.box.add_class("kit-row")
        self.box.add_class(css_name(name))

    def show(self, row: dict) -> None:
        for c, v in display_row(row).items():
            if c in self.cells and self.cells[c].value != html.escape(v):
                self.cells[c].value = html.escape(v)

    def busy(self, flag: bool) -> None:
        for b in self.buttons.values():
            b.disabled = flag

    def close(self) -> None:
        for x in [*self.cells.values(), *self.buttons.values(), self.box]:
            x.close()


class Instances(w.VBox):
    """A live table of this kernel's instances (see :func:`instances`)."""

    def __init__(self, interval: float = 1.5, tail: int = 40, stop_timeout: float = 10.0, start: bool = True):
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        if not isinstance(interval, (int, float)) or not 0.1 <= interval <= 60:
            raise InvalidSpec(f"interval {interval!r} must be 0.1 to 60 seconds (e.g. 1.5)")
        self.interval, self.tail_lines, self.stop_timeout = float(interval), int(tail), float(stop_timeout)
        #: Every error shown in the widget, in order (``"stop web: KitTimeout: ..."``).
        self.errors: list[str] = []
        self.rows: list[dict] = []
        self._rows: dict[str, _Row] = {}
        self._lock = threading.RLock()
        self._actions: list[threading.Thread] = []
        self._closed = False
        header = w.HBox([w.HTML(f"<b>{c}</b>", layout=w.Layout(width=_WIDTHS[c])) for c in COLUMNS])
        self.body = w.VBox()
        self.message = w.HTML()
        self.output = w.Output(layout=w.Layout(max_height="300px", overflow="auto"))
        self._parts = [header, self.body, self.message, self.output]
        super().__init__(self._parts)
        self.add_class("kit-instances")
        self.refresh()
        if start:
            self.start()

    # -- refreshing ----------------------------------------------------------
    def refresh(self) -> list[dict]:
        """Read the instances now and update the table; returns the rows."""
        rows = instance_rows()
        with self._lock:
            if self._closed:
                return rows  # closed meanwhile: no new child widgets
            self.rows = rows
            names = [r["name"] for r in rows]
            for gone in set(self._rows) - set(names):
                self._rows.pop(gone).close()
            for r in rows:
                if r["name"] not in self._rows:
                    self._rows[r["name"]] = _Row(self, r["name"])
                self._rows[r["name"]].show(r)
            boxes = tuple(self._rows[n].box for n in names)
            if self.body.children != boxes:
                self.body.children = boxes
        return rows

    def _loop(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.refresh()
            except Exception as e:  # shown, and the next round tries again
                self._error("refresh", e)

    def start(self) -> None:
        """Refresh every ``interval`` seconds in a background thread until :meth:`close`."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._halt.clear()
            self._thread = threading.Thread(target=self._loop, name="kit-widgets-instances", daemon=True)
            self._thread.start()

    @property
    def live(self) -> bool:
        """Whether the refresh thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop_refreshing(self, timeout: float | None = None) -> None:
        self._halt.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(self.interval + 30 if timeout is None else timeout)
        self._thread = None

    def close(self) -> None:
        """Stop refreshing and close the widget and its children."""
        self.stop_refreshing()
        if not hasattr(self, "_parts"):  # refused in __init__: nothing else was made
            return super().close()
        with self._lock:
            self._closed = True
            for row in self._rows.values():
                row.close()
            self._rows.clear()
            for part in self._parts:
                part.close()
        super().close()

    # -- the row buttons -----------------------------------------------------
    def act(self, what: str, name: str) -> threading.Thread:
        """What a row's button does (``logs``, ``stop``, ``rm``), in a thread so the kernel stays free;
        its outcome or error is shown in the widget. Returns the thread (see :meth:`wait`)."""
        fn = {"logs": self._logs, "stop": self._stop, "rm": self._rm}[what]
        row = self._rows.get(name)
        if row is not None:
            row.busy(True)

        def run():
            try:
                self._say(f"{what} {name}...")
                fn(name)
            except Exception as e:
                self._error(f"{what} {name}", e)
            finally:
                if row is not None:
                    row.busy(False)
                try:
                    self.refresh()
                except Exception as e:
                    self._error("refresh", e)

        t = threading.Thread(target=run, name=f"kit-widgets-{what}-{name}", daemon=True)
        with self._lock:
            self._actions = [a for a in self._actions if a.is_alive()] + [t]
        t.start()
        return t

    def wait(self, timeout: float = 60) -> None:
        """Wait for the buttons' actions in flight."""
        for t in list(self._actions):
            t.join(timeout)

    def _logs(self, name: str) -> None:
        r = api.logs(name)
        text = tail(r.stdout + (("\n[stderr]\n" + r.stderr) if r.stderr else ""), self.tail_lines)
        self.output.clear_output()
        self.output.append_stdout(f"--- {name}: last {self.tail_lines} lines of its logs ---\n{text}\n")
        self._say(f"logs of {name} below")

    def _stop(self, name: str) -> None:
        r = api.stop(name, timeout=self.stop_timeout)
        self._say(f"stopped {name} (exit {r.exit_code})")

    def _rm(self, name: str) -> None:
        api.rm(name)
        self._say(f"removed {name}")

    def _say(self, text: str) -> None:
        self.message.value = html.escape(text)

    def _error(self, what: str, e: BaseException) -> None:
        line = f"{what}: {describe_error(e)}"
        self.errors.append(line)
        self.message.value = f"<span style='color:#b00'>{html.escape(line)}</span>"
        if not isinstance(e, KitError):  # a bug, not the user's to fix: its traceback too
            self.output.append_stderr("".join(traceback.format_exception(e)))

    # -- display -------------------------------------------------------------
    def to_html(self) -> str:
        when = time.strftime("%H:%M:%S")
        return rows_html(self.rows, caption=f"instances of this kernel at {when}")

    def _repr_mimebundle_(self, **kwargs):
        data = super()._repr_mimebundle_(**kwargs) or {}
        data["text/html"] = self.to_html()
        data["text/plain"] = rows_text(self.rows)
        return data


def instances(interval: float = 1.5, tail: int = 40, stop_timeout: float = 10.0) -> Instances:
    """A live table of this kernel's instances: name, runtime, image, state, uptime, ports, memory (PSS).

    Refreshed every ``interval`` seconds by a background thread until the widget is closed
    (``w.close()``). Each row has logs (the last ``tail`` lines, shown below the table), stop
    (:func:`kit.stop` with ``stop_timeout``) and rm (:func:`kit.rm`) buttons; their errors are
    shown in the widget as the magics show them. Without a kernel (a report) it shows as a table.

    >>> live = kit.widgets.instances()
    >>> live                            # in a notebook cell
    >>> live.close()                    # stops refreshing
    """
    return Instances(interval=interval, tail=tail, stop_timeout=stop_timeout)


# -- a study's explorer ------------------------------------------------------------
VIEWS = ("runs", "summary")


def _measured(df):
    from .bench.stats import measured

    return measured(df)


def study_choices(df) -> dict[str, list[str]]:
    """part -> the metrics it has measured values for, in the study's order."""
    from .bench.params import PARTS

    m = _measured(df)
    out = {}
    for part in sorted(m["part"].unique(), key=lambda p: (PARTS.index(p) if p in PARTS else 99, p)):
        out[part] = list(dict.fromkeys(m[m["part"] == part]["metric"]))
    return out


def study_runtimes(df, part: str, metric: str) -> list[str]:
    """The runtimes with measured values of ``metric`` in ``part``, in the figures' order."""
    from .bench.plots import runtime_order

    m = _measured(df)
    sel = m[(m["part"] == part) & (m["metric"] == metric)]
    present = set(sel["runtime"])
    order = runtime_order(df, metric)
    return [r for r in order if r in present] + sorted(present - set(order))


def _scale(unit: str) -> tuple[float, str]:
    return {"s": (1000.0, "ms"), "bytes": (1 / 1024 ** 2, "MiB")}.get(unit, (1.0, unit or ""))


def _labels(sel) -> list[str]:
    """One label per row: runtime, plus component/image/workload where those vary."""
    cols = [c for c in ("component", "image", "workload") if sel[c].nunique() > 1]
    return [" ".join([r[0]] + [str(v) for v in r[1:] if str(v)])
            for r in sel[["runtime", *cols]].itertuples(index=False)]


def study_summary(study, part: str, metric: str, runtimes) -> "object":
    """The rows of ``study.summary(part)`` for ``metric`` and the chosen ``runtimes``."""
    s = study.summary(part)
    if not len(s):
        return s
    return s[(s["metric"] == metric) & (s["runtime"].isin(list(runtimes)))].reset_index(drop=True)


def study_figure(study, part: str, metric: str, runtimes, log: bool = False, view: str = "runs"):
    """A matplotlib Figure of ``metric``: every run as a point (``runs``), or the median with its
    interquartile range per runtime (``summary``, the numbers of :func:`study_summary`)."""
    import numpy as np
    from matplotlib.figure import Figure

    from .bench.plots import colour

    if view not in VIEWS:
        raise InvalidSpec(f"view {view!r}: choose runs or summary")
    df = _measured(study.df)
    sel = df[(df["part"] == part) & (df["metric"] == metric) & df["runtime"].isin(list(runtimes))]
    fig = Figure(figsize=(7.5, 3.6), layout="constrained")
    ax = fig.subplots()
    unit = sel["unit"].iloc[0] if len(sel) else ""
    factor, shown_unit = _scale(unit)
    kinds = dict(zip(df["runtime"], df["kind"]))
    labels: list[str] = []
    if len(sel):
        sel = sel.assign(label=_labels(sel), shown=sel["value"] * factor)
        rank = {r: i for i, r in enumerate(runtimes)}  # the order the runtimes were given in
        first = dict(zip(sel["label"], sel["runtime"]))
        labels = sorted(first, key=lambda lab: rank.get(first[lab], len(rank)))
    where = {lab: i for i, lab in enumerate(labels)}
    if len(sel):
        if view == "runs":
            rng = np.random.default_rng(0)
            for lab, grp in sel.groupby("label", sort=False):
                rt = grp["runtime"].iloc[0]
                x = where[lab] + rng.uniform(-0.18, 0.18, len(grp))
                ax.scatter(x, grp["shown"], s=14, alpha=0.7, color=colour(rt, kinds.get(rt, "")))
                ax.hlines(grp["shown"].median(), where[lab] - 0.3, where[lab] + 0.3, color="black", lw=1)
        else:
            for lab, grp in sel.groupby("label", sort=False):
                rt = grp["runtime"].iloc[0]
                q1, med, q3 = np.quantile(grp["shown"], [0.25, 0.5, 0.75])
                ax.bar(where[lab], med, color=colour(rt, kinds.get(rt, "")), width=0.6)
                ax.errorbar(where[lab], med, yerr=[[med - q1], [q3 - med]], color="black", capsize=4)
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0, ha="right"
                  if len(labels) > 4 else "center")
    ax.set_ylabel(f"{metric} ({shown_unit})" if shown_unit else metric)
    what = "every run (line: median)" if view == "runs" else "median, bars: interquartile range"
    title = f"{part}: {metric}, {what}"
    if log:
        if len(sel) and (sel["shown"] > 0).all():
            ax.set_yscale("log")
        else:
            title += " (linear: values <= 0 have no log)"
    if not len(sel):
        ax.text(0.5, 0.5, "no measured runs for this choice", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return fig


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _table_html(table) -> str:
    if not len(table):
        return "<p>no summary rows for this choice</p>"
    cols = [c for c in ("runtime", "image", "workload", "component", "unit", "runs", "median", "q1", "q3",
                        "ci_low", "ci_high", "mean", "sd", "outliers") if c in table.columns]
    return table[cols].to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", classes="kit-summary")


class Explore(w.VBox):
    """Controls over a finished or loaded study (see :func:`explore`)."""

    def __init__(self, study):
        study.results()  # a study without results says so (InvalidSpec)
        self.study = study
        self.choices = study_choices(study.df)
        if not self.choices:
            raise InvalidSpec("this study has no measured runs to explore (every run failed or was a warmup)")
        parts = list(self.choices)
        self.part = w.Dropdown(options=parts, value=parts[0], description="part")
        self.metric = w.Dropdown(options=self.choices[parts[0]], description="metric")
        self.runtimes = w.SelectMultiple(description="runtimes", rows=5)
        self.log_scale = w.Checkbox(value=False, description="log scale")
        self.view = w.ToggleButtons(options=VIEWS, value="runs", description="show")
        self.image = w.Image(format="png")
        self.table = w.HTML()
        self._sync_runtimes()
        self.part.observe(self._on_part, names="value")
        self.metric.observe(self._on_metric, names="value")
        for c in (self.runtimes, self.log_scale, self.view):
            c.observe(lambda _change: self.redraw(), names="value")
        controls = w.HBox([w.VBox([self.part, self.metric, self.log_scale, self.view]), self.runtimes])
        super().__init__([controls, self.image, self.table])
        self.redraw()

    def _sync_runtimes(self) -> None:
        have = study_runtimes(self.study.df, self.part.value, self.metric.value)
        keep = tuple(r for r in self.runtimes.value if r in have) or tuple(have)
        self.runtimes.options = have
        self.runtimes.value = keep

    def _on_part(self, change) -> None:
        self.metric.options = self.choices[change["new"]]  # resets the value: _on_metric redraws
        if self.metric.value not in self.choices[change["new"]]:
            self.metric.value = self.choices[change["new"]][0]

    def _on_metric(self, change) -> None:
        if change["new"] is None:
            return
        self._sync_runtimes()
        self.redraw()

    def selection(self) -> dict:
        return {"part": self.part.value, "metric": self.metric.value, "runtimes": list(self.runtimes.value),
                "log": self.log_scale.value, "view": self.view.value}

    def redraw(self) -> None:
        """Draw the figure and the summary table of the current choice."""
        s = self.selection()
        if s["metric"] is None:
            return
        self.image.value = figure_png(study_figure(self.study, **s))
        self.table.value = _table_html(study_summary(self.study, s["part"], s["metric"], s["runtimes"]))

    def to_html(self) -> str:
        png = base64.b64encode(self.image.value).decode("ascii")
        return f"<img src='data:image/png;base64,{png}'/>" + self.table.value

    def _repr_mimebundle_(self, **kwargs):
        data = super()._repr_mimebundle_(**kwargs) or {}
        data["text/html"] = self.to_html()
        return data


def explore(study) -> Explore:
    """Controls over a finished or loaded study: part, metric, runtimes, log scale, and every run
    or the summary; each change redraws the figure and the matching ``summary()`` rows."""
    return Explore(study)
