"""The benchmark's measuring kit, shared by scripts/benchmark.py and its generation groups
(scripts/_bench_engines.py): cases, interleaved timed rounds, rows with median, spread and paired ratio,
and the markdown table."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Case:
    """One row: something timed, optionally compared with another row of its group."""

    group: str
    name: str
    run: Callable[[], Any]
    baseline: str | None = None  # name of the case in the same group this one is compared with
    target: float | None = None  # design goal for the ratio to the baseline (<=); printed, never asserted
    summary: Callable[[Any], tuple[str, dict]] | None = None  # last output -> (note, extra JSON fields)
    note: str = ""
    samples: list[float] = field(default_factory=list)
    last: Any = None


@dataclass
class Row:
    """One measured row, as printed and as written to JSON."""

    group: str
    case: str
    median_s: float
    min_s: float
    max_s: float
    runs: int
    baseline: str | None
    ratio: float | None  # median of the per-repetition ratios to the baseline
    target: float | None
    met: bool | None
    note: str
    samples_s: list[float]
    extra: dict


def measure(cases: list[Case], runs: int, warmup: int = 1, progress: bool = False) -> None:
    """Run every case ``warmup + runs`` times, interleaved and rotated each round."""
    n = len(cases)
    for rep in range(warmup + runs):
        if progress and cases:
            print(f"[{cases[0].group}] round {rep + 1}/{warmup + runs}", file=sys.stderr, flush=True)
        shift = rep % n
        for case in cases[shift:] + cases[:shift]:
            start = time.perf_counter()
            case.last = case.run()
            elapsed = time.perf_counter() - start
            if rep >= warmup:
                case.samples.append(elapsed)


def rows_of(cases: list[Case]) -> list[Row]:
    by_name = {c.name: c for c in cases}
    rows = []
    for c in cases:
        ratio = met = None
        if c.baseline is not None:
            base = by_name[c.baseline].samples
            ratio = statistics.median(a / b for a, b in zip(c.samples, base))
            met = None if c.target is None else ratio <= c.target
        note, extra = c.note, {}
        if c.summary is not None:
            more, extra = c.summary(c.last)
            note = "; ".join(s for s in (note, more) if s)
        rows.append(Row(group=c.group, case=c.name, median_s=statistics.median(c.samples), min_s=min(c.samples),
                        max_s=max(c.samples), runs=len(c.samples), baseline=c.baseline, ratio=ratio, target=c.target,
                        met=met, note=note, samples_s=list(c.samples), extra=extra))
    return rows


def markdown(rows: list[Row]) -> str:
    lines = ["| group | case | median s | spread s (min-max) | ratio | target | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x {r.baseline}"
        target = "" if r.target is None else f"<= {r.target:.2f}x {'(met)' if r.met else '(NOT met)'}"
        lines.append(f"| {r.group} | {r.case} | {r.median_s:.3f} | {r.min_s:.3f}-{r.max_s:.3f} | {ratio} | {target} "
                     f"| {r.note} |")
    return "\n".join(lines)


def logged(run: Callable[[], Any], log: list) -> Callable[[], Any]:
    """``run``, recording each result's ``timings`` (per-stage seconds) in ``log``."""

    def wrapped():
        result = run()
        log.append(dict(result.timings))
        return result

    return wrapped


def stage_medians(log: list[dict], runs: int) -> dict[str, float]:
    """Median seconds per stage over the last ``runs`` entries of ``log`` (the warm-up left out)."""
    timed = log[-runs:] if runs else log
    names = list(dict.fromkeys(k for t in timed for k in t))
    return {k: statistics.median(t.get(k, 0.0) for t in timed) for k in names}
