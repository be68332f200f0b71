"""What every bench script shares: timing, rows of runs, the interleaved round runner,
the command line, the markdown table, the SVG bar chart and the JSON file.

A script defines its rows (a subclass of ``Row`` with its own fields) and how one run
is done (a function of the row and N that returns a ``Timing``); ``measure`` does the
rest. bench/ is not a package: the scripts ``import harness`` from their own folder,
which Python puts first on ``sys.path`` when it runs ``python bench/<script>.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar
from xml.sax.saxutils import escape

#: the consumer settings of every bench (wippy-queue's and the peers'), so that rows
#: are comparable across scripts
CONCURRENCY = 4
PREFETCH = 20


def bench_entries(
    handler: dict[str, Any],
    *,
    max_length: int | None = None,
    driver: dict[str, Any] | None = None,
    queue_name: str | None = None,
    consume_at_start: bool = True,
) -> dict[str, Any]:
    """The entry file every row starts from: a driver (``driver``'s entry, the memory
    driver by default), queue ``bench:jobs`` (named ``queue_name`` on the broker;
    holding up to ``max_length`` on the memory driver), ``handler`` (a function entry)
    and consumer ``bench:worker`` calling it with CONCURRENCY and PREFETCH, started
    with the runtime unless not ``consume_at_start``. Rows add to it."""
    chosen = driver or {"name": "memory", "kind": "queue.driver.memory"}
    jobs: dict[str, Any] = {
        "name": "jobs",
        "kind": "queue.queue",
        "driver": f"bench:{chosen['name']}",
    }
    if max_length is not None:
        jobs["driver_options"] = {"memory": {"max_length": max_length}}
    if queue_name is not None:
        jobs["queue_name"] = queue_name
    return {
        "version": "1.0",
        "namespace": "bench",
        "entries": [
            {**chosen, "lifecycle": {"auto_start": True}},
            jobs,
            handler,
            {
                "name": "worker",
                "kind": "queue.consumer",
                "queue": "bench:jobs",
                "func": f"bench:{handler['name']}",
                "concurrency": CONCURRENCY,
                "prefetch": PREFETCH,
                "lifecycle": {"auto_start": consume_at_start},
            },
        ],
    }


def fresh_audit(path: Path) -> None:
    """Remove a previous run's audit file and its chain head, so that the next run starts
    a new chain (a file gone while its head stays is a lost file, named as predecessor)."""
    from wippy_queue.audit.head import head_path

    path.unlink(missing_ok=True)
    head_path(path).unlink(missing_ok=True)


def check_audited(path: Path, n: int, key: str) -> None:
    """Reject a run whose audit file does not verify or lacks two records per message
    (its attempt, before the handler, and its consume record; + the trail's opening
    header and closing record)."""
    from wippy_queue.audit import verify_file

    result = verify_file(path)
    if not result.ok or result.records != 2 * n + 2:
        raise SystemExit(f"{key}: audit file has {result.records} records for {n}")


# -- timing and rows ------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """One measured run: wall-clock seconds and CPU seconds of the whole process."""

    wall_s: float
    cpu_s: float


def clock() -> tuple[float, float]:
    """Start a measurement: pass the result to ``since``."""
    return time.perf_counter(), time.process_time()


def since(started: tuple[float, float]) -> Timing:
    wall, cpu = clock()
    return Timing(wall - started[0], cpu - started[1])


def check_handled(handled: int, n: int, key: str) -> None:
    """Reject a run that lost (or invented) messages."""
    if handled != n:
        raise SystemExit(f"{key}: handled {handled} of {n} messages; the run is invalid")


@dataclass(frozen=True)
class Bar:
    """One bar of the chart: a median and the range of the runs."""

    label: str
    value: float
    low: float
    high: float


@dataclass
class Row:
    """A row of a table: its key and its measured runs (``measure`` fills them in)."""

    key: str
    n: int = field(default=0, init=False)
    timings: list[Timing] = field(default_factory=list, init=False)

    @property
    def rates(self) -> list[float]:
        """Messages per second (wall clock) of each run."""
        return [self.n / t.wall_s for t in self.timings]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def low(self) -> float:
        return min(self.rates)

    @property
    def high(self) -> float:
        return max(self.rates)

    @property
    def rate_range(self) -> str:
        return f"{self.low:,.0f}-{self.high:,.0f}"

    @property
    def wall_s(self) -> float:
        """Median wall-clock seconds of a run."""
        return statistics.median(t.wall_s for t in self.timings)

    @property
    def cpu_us_runs(self) -> list[float]:
        """CPU time of the whole process (all threads) per message, in µs, per run."""
        return [t.cpu_s / self.n * 1e6 for t in self.timings]

    @property
    def cpu_us(self) -> float:
        """Median CPU microseconds per message."""
        return statistics.median(self.cpu_us_runs)

    def paired_ratio(self, other: Row) -> float:
        """The median of the per-round ratios of this row's rate to ``other``'s. Rows
        run interleaved, so the two runs of a round share the machine's state of that
        moment, and their ratio cancels a drift that moves both (the two medians, taken
        apart, do not): on these shared VMs a row's rate moves by 1.5x within one run."""
        return statistics.median(a / b for a, b in zip(self.rates, other.rates, strict=True))

    def bar(self) -> Bar:
        return Bar(self.key, self.median, self.low, self.high)


R = TypeVar("R", bound=Row)


def measure(
    rows: Sequence[R], run: Callable[[R, int], Timing], *, n: int, repeat: int, warmup: int
) -> None:
    """One unmeasured run of ``warmup`` messages per row (none when 0), then ``repeat``
    rounds of every row in turn, so that slow drift hits all rows alike."""
    width = max(len(row.key) for row in rows)
    for row in rows:
        row.n = n
        if warmup > 0:
            run(row, warmup)
    for round_no in range(1, repeat + 1):
        for row in rows:
            gc.collect()
            row.timings.append(run(row, n))
            print(
                f"  round {round_no}/{repeat}  {row.key:<{width}} {row.rates[-1]:>10,.0f} msg/s"
                f" {row.cpu_us_runs[-1]:>7.1f} CPU µs/msg",
                file=sys.stderr,
            )


#: the line under a table with a paired column
PAIRED_NOTE = (
    "Paired: the median of the per-round ratios to the faster peer (rows run interleaved, "
    "so each round's runs share the machine's state of that moment)."
)


def select(rows: list[R], only: list[str] | None) -> list[R]:
    """The rows ``--only`` names (every row without it); an unknown key lists the known."""
    if not only:
        return rows
    known = {r.key for r in rows}
    if unknown := set(only) - known:
        raise SystemExit(f"unknown row(s) {sorted(unknown)}; known: {sorted(known)}")
    return [r for r in rows if r.key in only]


def row_json(row: Row, **more: Any) -> dict[str, Any]:
    """A measured row as the scripts' ``--json`` gives it: its key, what ``more`` adds,
    its runs and their medians."""
    return {
        "key": row.key,
        **more,
        "median_msg_s": row.median,
        "runs_msg_s": row.rates,
        "median_cpu_us_per_msg": row.cpu_us,
    }


def report(
    args: argparse.Namespace,
    rows: Sequence[Row],
    text: str,
    data: Callable[[], dict[str, Any]],
    *,
    title: str,
    settings: str,
) -> None:
    """Print the table ``text``; write ``data()`` to ``--json`` and the bars to ``--svg``
    when asked."""
    print(text)
    if getattr(args, "json", None):
        write_json(args.json, data())
    if args.svg:
        write_chart(
            args.svg,
            [row.bar() for row in rows],
            title=title,
            n=args.n,
            repeat=args.repeat,
            settings=settings,
        )


# -- command line ---------------------------------------------------------------------


def parser(doc: str | None, *, with_json: bool = False) -> argparse.ArgumentParser:
    """``--n``, ``--repeat``, ``--svg`` (and ``--json``); the script adds its own."""
    made = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    made.add_argument("--n", type=int, default=20_000, help="messages per run")
    made.add_argument("--repeat", type=int, default=5, help="measured runs per row (medians)")
    if with_json:
        made.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    made.add_argument(
        "--svg", type=Path, metavar="PATH", help="also draw the median msg/s as a bar chart here"
    )
    return made


def parse(made: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = made.parse_args(argv)
    if args.n <= 0 or args.repeat <= 0:
        made.error("--n and --repeat must be positive")
    return args


# -- markdown table -------------------------------------------------------------------


def markdown_table(header: Sequence[str], body: Iterable[Sequence[str]], *, left: int = 1) -> str:
    """A markdown table whose first ``left`` columns are text, the rest right-aligned."""
    align = "|".join("---" if i < left else "---:" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", f"|{align}|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


# -- SVG bar chart --------------------------------------------------------------------

_FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
_BAR_H, _GAP = 22, 14  # px
_CHAR_W, _TITLE_CHAR_W = 7.2, 9.5  # px: a 12px character and a 16px bold one, roughly


def _ticks(top: float, most: int = 8) -> list[float]:
    """Axis ticks from 0 past ``top``: the smallest step of 1, 2, 2.5 or 5 times a power
    of ten that needs at most ``most`` intervals."""
    power = 10.0 ** math.floor(math.log10(top / most))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if top / (m * power) <= most)
    return [step * i for i in range(math.ceil(top / step - 1e-9) + 1)]


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 10 else f"{value:,.3g}"


def _text(x: float, y: float, body: str, attrs: str = 'fill="#111"', size: int = 12) -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" {attrs}>{escape(body)}</text>'


@dataclass(frozen=True)
class _Frame:
    """Where the plot sits in the picture, and its value scale."""

    left: float
    right: float
    top: float
    axis_y: float
    ticks: list[float]

    def x(self, value: float) -> float:
        return self.left + value / self.ticks[-1] * (self.right - self.left)


def _frame(title: str, notes: Sequence[str], bars: Sequence[Bar]) -> tuple[_Frame, float]:
    """The plot's frame and the picture's width, from the texts' and bars' sizes."""
    longest_note = max((len(note) for note in notes), default=0)
    width = max(880.0, 40 + len(title) * _TITLE_CHAR_W, 40 + longest_note * _CHAR_W)
    top_value = max(max(b.high, b.value) for b in bars) or 1.0
    top = 38 + 18 * len(notes) + 12
    return _Frame(
        left=30 + max(len(b.label) for b in bars) * _CHAR_W,
        right=width - 90,  # room for the value printed past the longest whisker
        top=top,
        axis_y=top + len(bars) * (_BAR_H + _GAP) + _GAP,
        ticks=_ticks(top_value),
    ), width


def _axis(frame: _Frame, unit: str) -> list[str]:
    out = []
    for tick in frame.ticks:
        x = frame.x(tick)
        colour = "#888" if tick == 0 else "#e3e3e3"
        out.append(
            f'<line x1="{x:.1f}" y1="{frame.top:.1f}" x2="{x:.1f}" y2="{frame.axis_y:.1f}" '
            f'stroke="{colour}"/>'
        )
        out.append(_text(x, frame.axis_y + 16, _number(tick), 'text-anchor="middle"', 11))
    middle = (frame.left + frame.right) / 2
    out.append(_text(middle, frame.axis_y + 38, unit, 'text-anchor="middle" fill="#444"'))
    return out


def _bar(frame: _Frame, index: int, bar: Bar) -> list[str]:
    """The label, the bar, the min-max whisker with its caps, and the value."""
    y = frame.top + _GAP + index * (_BAR_H + _GAP)
    mid = y + _BAR_H / 2
    low, high = frame.x(bar.low), frame.x(bar.high)
    whisker = (
        f"M{low:.1f} {mid:.1f}H{high:.1f}M{low:.1f} {mid - 6:.1f}v12M{high:.1f} {mid - 6:.1f}v12"
    )
    return [
        _text(frame.left - 10, mid + 4, bar.label, 'text-anchor="end" fill="#111"'),
        f'<rect x="{frame.left:.1f}" y="{y:.1f}" width="{frame.x(bar.value) - frame.left:.1f}" '
        f'height="{_BAR_H}" fill="#4e79a7"/>',
        f'<path d="{whisker}" stroke="#222" stroke-width="1.5" fill="none"/>',
        _text(max(frame.x(bar.value), high) + 6, mid + 4, _number(bar.value)),
    ]


def bar_chart_svg(title: str, notes: Sequence[str], bars: Sequence[Bar], unit: str) -> str:
    """SVG text of a horizontal bar chart: a labelled bar per row, its value printed at
    the end, a min-max whisker on each, and a value axis (in ``unit``) with grid lines."""
    if not bars:
        raise ValueError("a bar chart needs at least one bar")
    frame, width = _frame(title, notes, bars)
    height = frame.axis_y + 50
    size = f'width="{width:.0f}" height="{height:.0f}"'
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" {size} viewBox="0 0 {width:.0f} {height:.0f}" '
        f'font-family="{_FONT}">',
        f"<title>{escape(title)}</title>",
        f'<rect {size} fill="white"/>',
        _text(20, 26, title, 'font-weight="bold" fill="#111"', 16),
        *(_text(20, 48 + 18 * i, note, 'fill="#444"') for i, note in enumerate(notes)),
        *_axis(frame, unit),
    ]
    for index, bar in enumerate(bars):
        out += _bar(frame, index, bar)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_chart(
    path: Path, bars: Sequence[Bar], *, title: str, n: int, repeat: int, settings: str
) -> None:
    """Write the bar chart of ``bars`` (median msg/s per row) to ``path`` as SVG."""
    runs = f"{repeat} run{'s' if repeat != 1 else ''}"
    notes = [
        f"N = {n:,} messages per run, {runs} per row; {settings}",
        "bar: median of the runs; whisker: min-max",
    ]
    path.write_text(bar_chart_svg(title, notes, bars, "messages per second"), encoding="utf-8")


# -- JSON -----------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _tree() -> str:
    """The wippy_queue source measured: its git commit, ``-dirty`` with local edits."""
    import wippy_queue

    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(wippy_queue.__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def machine(dists: Sequence[str] = ("wippy-queue",)) -> dict[str, Any]:
    """What was measured where: the wippy_queue commit, Python, the machine, versions."""
    return {
        "wippy_queue_tree": _tree(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "versions": {d: _version(d) for d in dists},
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
