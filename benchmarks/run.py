"""``python -m benchmarks.run [--quick]``: every scenario, jobkit vs bare SQL and vs the
peers (pgqueuer on PostgreSQL, huey's SqliteHuey on SQLite), both backends.

Prints a Markdown table (median and min–max of the repeats, ratio to the same-run
baseline and to the same-run peer, the issues' targets and whether they are met), writes
``results/latest.json`` and ``results/latest.png``. A run whose jobs were not all done
exactly once (jobkit's, the baseline's or a peer's) raises instead of reporting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from . import handlers as _handlers  # noqa: F401 - registers the benchmark handlers
from . import peers
from . import scenarios as sc
from .common import BACKENDS, Databases, Series

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

FULL = {"repeats": 3, "enqueue": 2_000, "enqueue_many": 10_000, "drain": 20_000,
        "drain_c1": 3_000, "write": 2_000, "cut": 500, "latency": 200, "multi": 20_000,
        "scale": 1_000_000, "memory": 100_000, "memory_marks": (20_000, 100_000),
        "scale_repeats": 20, "procs": (2, 4),
        "video_seconds": {"320x180": 60.0, "720p": 30.0}, "video_concurrent": 4}
QUICK = {"repeats": 1, "enqueue": 300, "enqueue_many": 2_000, "drain": 2_000,
         "drain_c1": 300, "write": 300, "cut": 100, "latency": 50, "multi": 2_000,
         "scale": 20_000, "memory": 3_000, "memory_marks": (1_000, 3_000), "scale_repeats": 3,
         "procs": (2,), "video_seconds": {"320x180": 10.0, "720p": 5.0},
         "video_concurrent": 2}


@dataclass
class Row:
    """One line of the table: a jobkit figure, its baselines, and the target it is held to."""

    backend: str
    scenario: str
    unit: str  # "jobs/s", "s", "ms"
    jobkit: Series = field(default_factory=Series)
    baselines: dict[str, Series] = field(default_factory=dict)
    ratio_to: str | None = None  # key of the baseline the ratio (and target) refers to
    target: str = ""
    threshold: float | None = None  # on the ratio (throughput) or on the value (latency, time)
    lower_is_better: bool = False
    note: str = ""
    peer: str | None = None  # key of the peer's figure in ``baselines``
    peer_threshold: float | None = None  # on jobkit ÷ peer (a time: at most; else at least)

    def base(self, key: str) -> Series:
        return self.baselines.setdefault(key, Series())

    @property
    def ratio(self) -> float | None:
        if self.ratio_to is None or self.ratio_to not in self.baselines:
            return None
        b, j = self.baselines[self.ratio_to].median, self.jobkit.median
        if not b or not j:
            return None
        return j / b

    @property
    def peer_ratio(self) -> float | None:
        if self.peer is None or self.peer not in self.baselines:
            return None
        p, j = self.baselines[self.peer].median, self.jobkit.median
        if not p or not j:
            return None
        return j / p

    @property
    def met(self) -> bool | None:
        own = self._met_own()
        if self.peer_threshold is None:
            return own
        r = self.peer_ratio
        if r is None:
            return own
        vs_peer = r <= self.peer_threshold if self.lower_is_better else r >= self.peer_threshold
        if self.peer_threshold == 1.0 and self.lower_is_better:
            vs_peer = r < 1.0  # "below the peer's"
        return vs_peer if own is None else (own and vs_peer)

    def _met_own(self) -> bool | None:
        if self.threshold is None:
            return None
        if self.ratio_to is not None:
            r = self.ratio
            if r is None:
                return None
            return r <= self.threshold if self.lower_is_better else r >= self.threshold
        return self.jobkit.median <= self.threshold if self.lower_is_better \
            else self.jobkit.median >= self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "scenario": self.scenario, "unit": self.unit,
                "jobkit": self.jobkit.values, "jobkit_median": self.jobkit.median,
                "baselines": {k: {"values": v.values, "median": v.median}
                              for k, v in self.baselines.items()},
                "ratio_to": self.ratio_to, "ratio": self.ratio, "target": self.target,
                "threshold": self.threshold, "met": self.met, "note": self.note,
                "peer": self.peer, "peer_ratio": self.peer_ratio,
                "peer_threshold": self.peer_threshold}


def row_from_dict(d: dict[str, Any]) -> Row:
    return Row(d["backend"], d["scenario"], d["unit"], Series(list(d["jobkit"])),
               {k: Series(list(v["values"])) for k, v in d["baselines"].items()},
               d["ratio_to"], d["target"], d["threshold"],
               d["unit"] in ("ms", "s", "MB"), d["note"], d.get("peer"), d.get("peer_threshold"))


def fmt(s: Series, unit: str) -> str:
    if not s.values:
        return "–"
    digits = 0 if unit == "jobs/s" else (2 if unit in ("s", "CPU-s/min", "cores") else 1)

    def f(v: float) -> str:
        return f"{v:,.{digits}f}"

    if len(s.values) == 1:
        return f"{f(s.median)} {unit}"
    return f"{f(s.median)} {unit} ({f(s.lo)}–{f(s.hi)})"


BASE_NAMES = {"one": "bare, one at a time", "batched": "bare, batched 100",
              "multi": "bare multi-row insert", "ideal": "ideal", "bare": "bare SQL",
              "empty": "same, empty table", "decode": "bare PyAV decode",
              "decode+scale": "bare PyAV decode + scale", "pyav": "2 bare PyAV loops",
              "pgqueuer": "pgqueuer", "huey": "SqliteHuey"}


def peer_of(backend: str) -> str:
    return "pgqueuer" if backend == "postgresql" else "huey"


def table(rows: list[Row]) -> str:
    out = ["| backend | scenario | jobkit | baseline(s) and peer | jobkit ÷ bare | jobkit ÷ peer "
           "| target | met |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bases = "; ".join(f"{BASE_NAMES.get(k, k)}: {fmt(v, r.unit)}"
                          for k, v in r.baselines.items())
        ratio = f"{r.ratio:.2f}× of {BASE_NAMES.get(r.ratio_to or '', r.ratio_to)}" \
            if r.ratio is not None else ""
        vs_peer = f"{r.peer_ratio:.2f}× of {BASE_NAMES.get(r.peer or '', r.peer)}" \
            if r.peer_ratio is not None else ""
        met = {True: "met", False: "**missed**", None: ""}[r.met]
        note = f" — {r.note}" if r.note else ""
        out.append(f"| {r.backend} | {r.scenario} | {fmt(r.jobkit, r.unit)} | {bases} | "
                   f"{ratio} | {vs_peer} | {r.target}{note} | {met} |")
    return "\n".join(out)


def plot(rows: list[Row], path: str) -> None:
    try:
        from jobkit.plotting import JobkitFigure as FigureClass
    except ImportError:  # plotting extra missing or module not there
        from matplotlib.figure import Figure as FigureClass
    shown = [r for r in rows if (r.ratio is not None and not r.lower_is_better)
             or r.threshold is not None]
    labels, values, colors, marks, peer_marks = [], [], [], [], []
    for r in shown:
        pr = r.peer_ratio  # plotted so that > 1 is good, like the bars
        peer_marks.append(None if pr is None else (1 / pr if r.lower_is_better else pr))
        if r.ratio is not None and not r.lower_is_better:
            v, mark = r.ratio, r.threshold
        else:  # times and latencies: plot target / value, so > 1 is good and the tick is 1
            value = r.ratio if r.ratio is not None else r.jobkit.median
            v = (r.threshold / value) if (r.threshold and value) else 0.0
            mark = 1.0 if r.threshold else None
        labels.append(f"{r.backend[:6]} · {r.scenario}")
        values.append(v)
        marks.append(mark)
        colors.append({True: "#2a9d8f", False: "#e76f51", None: "#8d99ae"}[r.met])
    fig = FigureClass(figsize=(10, 0.32 * len(labels) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    y = list(range(len(labels)))[::-1]
    values = [min(max(v, 0.02), 50.0) for v in values]  # log axis: keep the far ends visible
    ax.barh(y, values, color=colors)
    ax.set_xscale("log")
    for yi, m in zip(y, marks, strict=True):
        if m is not None:
            ax.plot([m, m], [yi - 0.4, yi + 0.4], color="black", linewidth=1.5)
    for yi, pm in zip(y, peer_marks, strict=True):
        if pm is not None:
            ax.plot([min(max(pm, 0.02), 50.0)], [yi], marker="D", color="#264653", markersize=5)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlabel("bars: jobkit ÷ bare SQL (times: target ÷ jobkit);  "
                  "◆: jobkit ÷ peer (times: peer ÷ jobkit)\n"
                  "log scale, higher is better, black tick = target")
    ax.set_title("jobkit vs bare SQL (bars) and vs the peer (◆)\n"
                 "green: targets met, red: missed, grey: no target")
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=110)


async def run(quick: bool, only: set[str] | None, backends: tuple[str, ...],
              with_peers: bool = True) -> list[Row]:
    cfg = QUICK if quick else FULL
    reps = int(cfg["repeats"])  # type: ignore[call-overload]
    dbs = Databases()
    await dbs.start()
    rows: list[Row] = []
    have = peers.available() if with_peers else {"pgqueuer": False, "huey": False}
    if with_peers and not all(have.values()):
        print("peers missing (install them with pip install -e '.[bench]'): "
              f"{sorted(k for k, v in have.items() if not v)}", file=sys.stderr)
    if have["pgqueuer"] and dbs.pg_ok:
        await peers.pg_create_db()
    else:
        have["pgqueuer"] = False

    def want(name: str) -> bool:
        return only is None or name in only

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    try:
        for be in backends:
            if be == "postgresql" and not dbs.pg_ok:
                continue

            async def fresh() -> str:
                return await dbs.fresh(be)  # noqa: B023 - used in this iteration only

            peer = peer_of(be)
            has_peer = have[peer]

            if want("enqueue"):
                n, m = cfg["enqueue"], cfg["enqueue_many"]
                r1 = Row(be, f"enqueue ×{n:,} (one per transaction)", "jobs/s", ratio_to="one",
                         target="≥ 0.60× bare insert+commit", threshold=0.60)
                r2 = Row(be, f"enqueue_many ×{m:,}", "jobs/s", ratio_to="multi",
                         target="≥ 0.50× bare multi-row insert", threshold=0.50)
                if has_peer:
                    r1.peer, r1.peer_threshold = peer, 1.0
                    r1.target += f"; ≥ 1× {BASE_NAMES[peer]}"
                    if peer == "pgqueuer":  # huey has no batch enqueue
                        r2.peer = peer
                for _ in range(reps):
                    r1.jobkit.add(await sc.jk_enqueue_single(await fresh(), n))
                    r1.base("one").add(await sc.bare_enqueue_single(await fresh(), n))
                    r2.jobkit.add(await sc.jk_enqueue_many(await fresh(), m))
                    r2.base("multi").add(await sc.bare_enqueue_many(await fresh(), m))
                    if has_peer and peer == "pgqueuer":
                        r1.base(peer).add(await peers.pg_enqueue_single(n))
                        r2.base(peer).add(await peers.pg_enqueue_many(m))
                    elif has_peer:
                        r1.base(peer).add(peers.huey_enqueue_single(dbs.tmp, n))
                rows += [r1, r2]
                say(f"{be} enqueue done")
            if want("drain"):
                n, n1 = cfg["drain"], cfg["drain_c1"]
                one, batched = Series(), Series()
                for _ in range(reps):
                    one.add(await sc.bare_drain(await fresh(), n1, "one"))
                    batched.add(await sc.bare_drain(await fresh(), n, "batched"))
                for c in (1, 10, 100):
                    size = n1 if c == 1 else n
                    r = Row(be, f"no-op drain ×{size:,}, concurrency {c}", "jobs/s",
                            baselines={"one": one, "batched": batched},
                            ratio_to="batched" if c > 1 else "one")
                    if c == 100:
                        r.target, r.threshold = "≥ 0.40× bare batched", 0.40
                    if has_peer:
                        r.peer = peer
                        if c == 10:
                            r.peer_threshold = 3.0 if peer == "pgqueuer" else 2.5
                            r.target = f"≥ {r.peer_threshold:g}× {BASE_NAMES[peer]}"
                    for _ in range(reps):
                        r.jobkit.add(await sc.jk_drain(await fresh(), size, c))
                        if has_peer and peer == "pgqueuer":
                            r.base(peer).add(await peers.pg_drain(size, c))
                        elif has_peer:
                            # In this (main) thread: huey's consumer sets signal handlers.
                            r.base(peer).add(peers.huey_drain(dbs.tmp, size, c))
                    rows.append(r)
                say(f"{be} drain done")
            if want("write"):
                n = cfg["write"]
                one = Series()
                for _ in range(reps):
                    one.add(await sc.bare_drain(await fresh(), n, "write", "bench_write"))
                for c in (1, 10):
                    r = Row(be, f"transactional handler ×{n:,}, concurrency {c}", "jobs/s",
                            baselines={"one": one}, ratio_to="one")
                    if c == 1:
                        r.target, r.threshold = "≥ 0.60× bare one at a time", 0.60
                    for _ in range(reps):
                        r.jobkit.add(await sc.jk_drain(await fresh(), n, c, "bench_write"))
                    rows.append(r)
                say(f"{be} write done")
            if want("cut"):
                n = cfg["cut"]
                ideal = n / 100 * 0.5
                r = Row(be, f"cut_analysis {n} × 0.5 s, concurrency 100", "s",
                        ratio_to="ideal", lower_is_better=True,
                        target=f"≤ 1.3× ideal {ideal:g} s", threshold=1.3)
                r.base("ideal").values = [ideal]
                for _ in range(reps):
                    r.jobkit.add(await sc.jk_cut(await fresh(), n, 100, 0.5))
                    r.base("bare").add(await sc.bare_cut(await fresh(), n, 100, 0.5))
                rows.append(r)
                say(f"{be} cut_analysis done")
            if want("latency"):
                n = cfg["latency"]
                p50x = Row(be, f"latency p50, worker in another process ({n} jobs, 5 ms apart)",
                           "ms", lower_is_better=True)
                p99x = Row(be, "latency p99, worker in another process", "ms",
                           lower_is_better=True)
                p50i = Row(be, "latency p50, worker in the same process", "ms",
                           lower_is_better=True, target="< 2 ms", threshold=2.0)
                p99i = Row(be, "latency p99, worker in the same process", "ms",
                           lower_is_better=True)
                if be == "postgresql":
                    p50x.target, p50x.threshold = "< 5 ms", 5.0
                    p99x.target, p99x.threshold = "< 25 ms", 25.0
                else:
                    p50x.target, p50x.threshold = "< 20 ms", 20.0
                for _ in range(reps):
                    lat = await sc.jk_latency_xproc(await fresh(), n, 0.005)
                    p50x.jobkit.add(pct(lat, 50))
                    p99x.jobkit.add(pct(lat, 99))
                    lat = await sc.jk_latency_inproc(await fresh(), n, 0.005)
                    p50i.jobkit.add(pct(lat, 50))
                    p99i.jobkit.add(pct(lat, 99))
                    lat = await sc.bare_latency(await fresh(), n, 0.005)
                    for row, q in ((p50x, 50), (p99x, 99), (p50i, 50), (p99i, 99)):
                        row.base("bare").add(pct(lat, q))
                    if has_peer:
                        lat = await peers.latency_xproc(peer, n, 0.005, dbs.tmp)
                        p50x.base(peer).add(pct(lat, 50))
                        p99x.base(peer).add(pct(lat, 99))
                        lat = await (peers.pg_latency_inproc(n, 0.005) if peer == "pgqueuer"
                                     else peers.huey_latency_inproc(dbs.tmp, n, 0.005))
                        p50i.base(peer).add(pct(lat, 50))
                        p99i.base(peer).add(pct(lat, 99))
                if has_peer:
                    for row in (p50x, p99x, p50i, p99i):
                        row.peer = peer
                    for row in (p50x, p50i):
                        row.peer_threshold = 1.0
                        row.target += f"; below {BASE_NAMES[peer]}'s"
                rows += [p50x, p99x, p50i, p99i]
                say(f"{be} latency done")
            if want("multi"):
                n = cfg["multi"]
                for procs in cfg["procs"]:  # type: ignore[attr-defined]
                    r = Row(be, f"{procs} worker processes × concurrency 100, {n:,} no-op jobs",
                            "jobs/s", ratio_to="bare", note="bare: same processes, batched 100")
                    for _ in range(reps):
                        r.jobkit.add(await sc.multiproc(await fresh(), n, procs, 100, False))
                        r.base("bare").add(await sc.multiproc(await fresh(), n, procs, 100, True))
                    rows.append(r)
                say(f"{be} multi-process done")
            if want("scale"):
                rows += await scale_rows(be, cfg, fresh)
                say(f"{be} scale done")
            if want("video"):
                rows += await video_rows(be, cfg, reps, fresh, dbs.tmp)
                say(f"{be} video done")
            if want("memory"):
                n = int(cfg["memory"])  # type: ignore[call-overload]
                marks = cfg["memory_marks"]
                m = await sc.memory(await fresh(), n, marks)  # type: ignore[arg-type]
                grow = (m["rss_last"] - m["rss_first"]) / 2**20
                r = Row(be, f"worker RSS after {marks[0]:,} → {marks[1]:,} jobs "  # type: ignore[index]
                        "(concurrency 100)", "MB", target="no growth (< 10 MB)",
                        threshold=10.0, lower_is_better=True,
                        note=f"RSS {m['rss_first'] / 2**20:.1f} → {m['rss_last'] / 2**20:.1f} MB, "
                             f"peak {m['peak_first'] / 2**20:.1f} → {m['peak_last'] / 2**20:.1f} MB")
                r.jobkit.add(grow)
                rows.append(r)
                say(f"{be} memory done")
    finally:
        await dbs.close()
        if have["pgqueuer"]:
            await peers.pg_drop_db()
    return rows


async def video_rows(be: str, cfg: dict[str, Any], reps: int, fresh: Any,
                     folder: str) -> list[Row]:
    """Real cut analysis: CPU-s per minute of video vs a bare PyAV decode (benchmarks/video.py)."""
    from . import video as vb

    files = await asyncio.to_thread(vb.make_files, folder, cfg["video_seconds"])
    rows = []
    for label, v in files.items():
        minutes = v.duration_ms / 60_000
        r = Row(be, f"cut_analysis of {v.duration_ms / 1000:g} s of {label} video "
                    f"({v.frames} frames, {len(v.cut_frames)} cuts)", "CPU-s/min",
                ratio_to="decode", lower_is_better=True,
                note="decode: bare PyAV decode loop; decode+scale: also scaled to 160 px")
        for _ in range(reps):
            cpu, result = await vb.jk_analysis(await fresh(), v.path)
            if [round(ms * v.fps / 1000) for ms in result["scene_cuts_ms"]] != v.cut_frames:
                raise RuntimeError(f"{label}: cuts {result['scene_cuts_ms']} != {v.cuts_ms}")
            r.jobkit.add(cpu / minutes)
            r.base("decode").add(vb.bare_decode(v.path, False)[0] / minutes)
            r.base("decode+scale").add(vb.bare_decode(v.path, True)[0] / minutes)
        rows.append(r)
    v = files["320x180"]
    n = int(cfg["video_concurrent"])
    busy = Row(be, f"{n} analyses of {label_of(v)} at concurrency 2: cores busy (CPU ÷ wall)",
               "cores", ratio_to="pyav", target="≥ 0.8× bare (both cores as busy as two "
               "bare PyAV loops)", threshold=0.8)
    gap = Row(be, f"{n} analyses at concurrency 2: largest heartbeat gap (heartbeat 1 s, "
                  "lease 3 s)", "s", target="< 2 s (no lease lost)", threshold=2.0,
              lower_is_better=True)
    for _ in range(reps):
        m = await vb.concurrent(await fresh(), v.path, n)
        busy.jobkit.add(m["cores_busy"])
        busy.base("pyav").add((await asyncio.to_thread(vb.bare_concurrent, v.path, n))
                              ["cores_busy"])
        gap.jobkit.add(m["max_heartbeat_gap_s"])
        busy.note = f"wall {m['wall_s']:.1f} s, CPU {m['cpu_s']:.1f} s"
        gap.note = f"{m['heartbeats']:.0f} heartbeats seen, no lease lost"
    return rows + [busy, gap]


def label_of(v: Any) -> str:
    return f"{v.duration_ms / 1000:g} s {v.width}x{v.height}"


async def scale_rows(be: str, cfg: dict[str, Any], fresh: Any) -> list[Row]:
    reps = int(cfg["scale_repeats"])
    url = await fresh()
    empty = await sc.measure_queries(url, 1_000, reps)
    url = await fresh()
    t0 = time.perf_counter()
    await sc.fill_finished(url, int(cfg["scale"]))
    fill = time.perf_counter() - t0
    full = await sc.measure_queries(url, 1_000, reps)
    big = f"{int(cfg['scale']):,}"
    rows = []
    for key, label in (("claim1", "claim 1 job"), ("claim100", "claim 100 jobs")):
        r = Row(be, f"{label} with {big} finished jobs", "ms", ratio_to="empty",
                lower_is_better=True, target="≤ 2× the empty table", threshold=2.0,
                note=f"1,000 waiting; table filled in {fill:.0f} s")
        r.jobkit.add(full[key])
        r.base("empty").add(empty[key])
        rows.append(r)
    for key, label in (("status_counts", "status_counts"), ("queue_depth", "queue_depth")):
        r = Row(be, f"{label} with {big} finished jobs", "ms", lower_is_better=True)
        if key == "status_counts":
            r.target, r.threshold = "< 1 s", 1000.0
        r.jobkit.add(full[key])
        r.base("empty").add(empty[key])
        rows.append(r)
    return rows


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))
    return s[k]


def environment() -> dict[str, Any]:
    import sqlite3

    import aiosqlite
    import asyncpg
    import sqlalchemy

    env: dict[str, Any] = {
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__, "asyncpg": asyncpg.__version__,
        "aiosqlite": aiosqlite.__version__, "cpus": os.cpu_count(),
        "platform": platform.platform()}
    from importlib.metadata import PackageNotFoundError, version

    for peer in ("pgqueuer", "huey"):
        try:
            env[peer] = version(peer)
        except PackageNotFoundError:
            env[peer] = None
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu"] = next((line.split(":", 1)[1].strip() for line in f
                               if line.startswith("model name")), "?")
        with open("/proc/meminfo") as f:
            env["memory_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return env


async def pg_version() -> str:
    import asyncpg

    from .common import PG_ADMIN_URL, plain_dsn

    try:
        conn = await asyncpg.connect(plain_dsn(PG_ADMIN_URL), timeout=5)
        try:
            return str(await conn.fetchval("SHOW server_version")) + ", synchronous_commit=" + \
                str(await conn.fetchval("SHOW synchronous_commit"))
        finally:
            await conn.close()
    except Exception as exc:  # noqa: BLE001
        return f"unavailable ({type(exc).__name__})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a reduced run (< 1 minute)")
    p.add_argument("--only", default="", help="comma-separated scenarios: enqueue, drain, "
                   "write, cut, latency, multi, scale, memory, video")
    p.add_argument("--backend", choices=BACKENDS, action="append", default=None)
    p.add_argument("--no-peers", action="store_true",
                   help="skip pgqueuer and huey (they need the bench extra)")
    p.add_argument("--out", default=os.path.join(RESULTS, "latest"),
                   help="path prefix of the .json and .png written")
    p.add_argument("--replot", metavar="JSON", help="only redraw the PNG of a results file")
    args = p.parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            saved = json.load(f)
        rows = [row_from_dict(d) for d in saved["rows"]]
        plot(rows, os.path.splitext(args.replot)[0] + ".png")
        return 0
    logging.basicConfig(level=logging.WARNING)
    only = {s.strip() for s in args.only.split(",") if s.strip()} or None
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    rows = asyncio.run(run(args.quick, only, tuple(args.backend or BACKENDS),
                           with_peers=not args.no_peers))
    elapsed = time.perf_counter() - t0
    env = environment()
    # The machine's load (1, 5, 15 min) before and after: other work on these cores moves
    # every figure.
    env["load_average"] = {"before": load_before, "after": os.getloadavg()}
    env["postgresql"] = asyncio.run(pg_version())
    md = table(rows)
    print(md)
    print(f"\n{'quick' if args.quick else 'full'} run in {elapsed:.0f} s")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"mode": "quick" if args.quick else "full", "elapsed_s": elapsed,
                   "settings": QUICK if args.quick else FULL, "environment": env,
                   "rows": [r.as_dict() for r in rows], "table": md}, f, indent=1, default=str)
    plot(rows, args.out + ".png")
    print(f"wrote {args.out}.json and {args.out}.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
