#!/usr/bin/env python3
"""The soak's sampler and its plot (scripts/soak.sh runs both).

  soak.py sample --out CSV --metrics URL --pid NAME=PID... --db NAME=URL...
                 [--interval S] [--stop-file F]
      Every S seconds (default 10) appends one row to CSV: the time since
      the start, the sagas that ended (the sum of falcon run's
      falcon_sagas_{completed,failed,compensated}_total), the rows pruned so
      far (falcon_rows_pruned_total), falcon run's heap (allocated and
      resident, from its allocator's gauges, MB), the resident memory of
      each named process (VmRSS, MB), and the rows of every table of every database
      (sqlite://PATH or postgres://...; PostgreSQL is read with psql).
      Stops when F exists, or on SIGTERM.

  soak.py plot CSV SVG [--title T]
      Draws three panels into SVG (no plotting library needed): sagas/s
      between samples, RSS per process, and rows per table (tables that
      stay empty are left out). Prints a summary: throughput and RSS of
      the first and last tenth of the run, and each table's first, largest
      and last row count.

Only the standard library: the machine that runs the soak needs nothing
beyond python3 (and psql for PostgreSQL).
"""

import argparse
import csv
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from xml.sax.saxutils import escape

ENDED = (
    "falcon_sagas_completed_total",
    "falcon_sagas_failed_total",
    "falcon_sagas_compensated_total",
)
PRUNED = "falcon_rows_pruned_total"
# The allocator's gauges (src/memory.rs): what falcon run holds, and the
# resident pages its allocator keeps for it.
HEAP = (("allocated", "falcon_memory_allocated_bytes"), ("resident", "falcon_memory_resident_bytes"))
SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def metric_sums(url):
    """Sums of each metric name over its label sets, from a /metrics page."""
    sums = {}
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode("utf-8", "replace").splitlines():
            m = SAMPLE_LINE.match(line)
            if not m:
                continue
            try:
                value = float(m.group(3))
            except ValueError:
                continue
            sums[m.group(1)] = sums.get(m.group(1), 0.0) + value
    return sums


def memory_mb(pid):
    """VmRSS and its parts (RssAnon: the heap; RssFile: mapped files;
    RssShmem: shared memory, such as SQLite's WAL index), in MB."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return out


def sqlite_path(url):
    path = url[len("sqlite://"):].split("?", 1)[0]
    return path


def table_rows(url):
    """{table: rows} of one database."""
    if url.startswith("sqlite://"):
        con = sqlite3.connect(f"file:{sqlite_path(url)}?mode=ro", uri=True, timeout=30)
        try:
            names = [
                r[0]
                for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'seaql_%' ORDER BY name"
                )
            ]
            return {n: con.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
        finally:
            con.close()
    names = subprocess.run(
        ["psql", "-qtA", url, "-c",
         "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
         " AND tablename NOT LIKE 'seaql_%' ORDER BY tablename"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.split()
    if not names:
        return {}
    query = " UNION ALL ".join(f"SELECT '{n}', count(*) FROM \"{n}\"" for n in names)
    out = subprocess.run(
        ["psql", "-qtA", "-F", " ", url, "-c", query],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout
    return {n: int(c) for n, c in (line.split() for line in out.splitlines() if line.strip())}


def named(pairs, what):
    out = []
    for p in pairs:
        name, sep, value = p.partition("=")
        if not sep or not name or not value:
            sys.exit(f"soak.py: {what} must be NAME=VALUE, not {p!r}")
        out.append((name, value))
    return out


def sample(args):
    pids = named(args.pid, "--pid")
    dbs = named(args.db, "--db")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    header = None
    start = time.monotonic()
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        while not stop["now"] and not (args.stop_file and os.path.exists(args.stop_file)):
            due = time.monotonic() + args.interval
            row = {"t_s": round(time.monotonic() - start, 1)}
            try:
                sums = metric_sums(args.metrics)
                row["ended"] = int(sum(sums.get(m, 0.0) for m in ENDED))
                row["pruned"] = int(sums.get(PRUNED, 0.0))
                for name, metric in HEAP:
                    if metric in sums:
                        row[f"heap_mb:{name}"] = round(sums[metric] / (1 << 20), 1)
            except Exception as e:  # the process restarting, or slow: a gap
                print(f"soak.py: metrics: {e}", file=sys.stderr)
                row["ended"] = row["pruned"] = ""
            for name, pid in pids:
                mem = memory_mb(pid)
                mb = mem.get("VmRSS", "")
                row[f"rss_mb:{name}"] = round(mb, 1) if mb != "" else ""
                # The parts, in the CSV only: where a rise comes from.
                for part in ("RssAnon", "RssFile", "RssShmem"):
                    v = mem.get(part, "")
                    row[f"{part.lower()}_mb:{name}"] = round(v, 1) if v != "" else ""
            for name, url in dbs:
                try:
                    for table, n in table_rows(url).items():
                        row[f"rows:{name}.{table}"] = n
                except Exception as e:
                    print(f"soak.py: rows of {name}: {e}", file=sys.stderr)
            if header is None:
                header = list(row)
                w.writerow(header)
            w.writerow([row.get(k, "") for k in header])
            f.flush()
            while not stop["now"] and time.monotonic() < due:
                if args.stop_file and os.path.exists(args.stop_file):
                    break
                time.sleep(0.2)


# --- the plot ------------------------------------------------------------------

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
           "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939",
           "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354"]


def read_rows(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) < 2:
        sys.exit(f"soak.py: {path} has fewer than two samples")
    return rows


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def throughput(rows):
    """(t, sagas/s) between consecutive samples that both have a count."""
    out = []
    prev = None
    for r in rows:
        t, e = num(r["t_s"]), num(r["ended"])
        if t is None or e is None:
            continue
        if prev is not None and t > prev[0]:
            out.append((t, (e - prev[1]) / (t - prev[0])))
        prev = (t, e)
    return out


def nice_max(v):
    if v <= 0:
        return 1.0
    mag = 10 ** len(str(int(v))) / 10
    for step in (1, 2, 2.5, 5, 10):
        if v <= step * mag:
            return step * mag
    return 10 * mag


def fmt(v):
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def panel(y0, title, series, t_max, unit, w=900):
    """SVG of one panel at vertical offset y0: series is [(label, [(t, v)])];
    tall enough for its legend."""
    h = max(220, 60 + 14 * len(series) + 10)
    left, top, pw, ph = 70, y0 + 28, w - 70 - 230, h - 60
    v_max = nice_max(max((v for _, pts in series for _, v in pts), default=1.0))
    out = [f'<text x="{left}" y="{y0 + 18}" font-size="14" font-weight="bold">{escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for i in range(5):
        v = v_max * i / 4
        y = top + ph - ph * i / 4
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{fmt(v)}</text>')
    for i in range(7):
        t = t_max * i / 6
        x = left + pw * i / 6
        out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" font-size="11" text-anchor="middle">{t / 60:.0f} min</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" font-size="11" transform="rotate(-90 14 {top + ph / 2})" text-anchor="middle">{escape(unit)}</text>')
    for i, (label, pts) in enumerate(series):
        c = COLOURS[i % len(COLOURS)]
        d = " ".join(f"{left + pw * t / t_max:.1f},{top + ph - ph * min(v, v_max) / v_max:.1f}" for t, v in pts)
        out.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="1.5"/>')
        ly = top + 10 + 14 * i
        out.append(f'<line x1="{left + pw + 12}" y1="{ly - 4}" x2="{left + pw + 30}" y2="{ly - 4}" stroke="{c}" stroke-width="3"/>')
        out.append(f'<text x="{left + pw + 36}" y="{ly}" font-size="11">{escape(label)}</text>')
    return out, h


def plot(args):
    rows = read_rows(args.csv)
    t_max = max(num(r["t_s"]) or 0.0 for r in rows) or 1.0
    tp = throughput(rows)
    rss = [(k.split(":", 1)[1], [(num(r["t_s"]), num(r[k])) for r in rows if num(r[k]) is not None])
           for k in rows[0] if k.startswith("rss_mb:")]
    # falcon run's heap as its allocator counts it, beside its RSS.
    rss += [(f"falcon-run heap {k.split(':', 1)[1]}",
             [(num(r["t_s"]), num(r[k])) for r in rows if num(r[k]) is not None])
            for k in rows[0] if k.startswith("heap_mb:")]
    tables = []
    for k in rows[0]:
        if not k.startswith("rows:"):
            continue
        pts = [(num(r["t_s"]), num(r[k])) for r in rows if num(r.get(k)) is not None]
        if pts and max(v for _, v in pts) > 0:
            tables.append((k.split(":", 1)[1], pts))
    # Tables that grow with the business (one row per payment or more) in
    # one panel, the bounded ones (inbox, outbox, pruned) in another, so
    # that neither scale hides the other.
    bounded = [s for s in tables if re.search(r"(inbox|outbox)", s[0])]
    growing = [s for s in tables if s not in bounded]
    parts, y = [], 40
    for title, series, unit in (
        ("Sagas ended per second (between samples)", [("sagas/s", tp)], "sagas/s"),
        # falcon run on a scale of its own: the broker's memory, which grows
        # with the messages it stores, would flatten it.
        ("falcon run: resident memory (VmRSS), and its heap as its allocator counts it",
         [x for x in rss if x[0].startswith("falcon-run")], "MB"),
        ("Other processes: resident memory (VmRSS)",
         [x for x in rss if not x[0].startswith("falcon-run")], "MB"),
        ("Rows of the other tables (the business record, kept; small state tables)", growing, "rows"),
        ("Rows pruned by retention (inbox, outbox)", bounded, "rows"),
    ):
        if series:
            svg, h = panel(y, title, series, t_max, unit)
            parts += svg
            y += h
    title = args.title or os.path.basename(args.csv)
    doc = [f'<svg xmlns="http://www.w3.org/2000/svg" width="900" height="{y + 10}" font-family="sans-serif">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="450" y="24" font-size="16" text-anchor="middle">{escape(title)}</text>',
           *parts, "</svg>"]
    with open(args.svg, "w") as f:
        f.write("\n".join(doc) + "\n")
    summary(rows, tp, rss, tables)


def summary(rows, tp, rss, tables):
    def tenth(pts, last):
        n = max(1, len(pts) // 10)
        part = pts[-n:] if last else pts[:n]
        return sum(v for _, v in part) / len(part)
    ended = [num(r["ended"]) for r in rows if num(r["ended"]) is not None]
    print(f"samples: {len(rows)} over {num(rows[-1]['t_s']) / 60:.1f} min; sagas ended: {int(ended[-1] - ended[0]) if ended else 0}")
    if tp:
        print(f"sagas/s: first tenth {tenth(tp, False):.0f}, last tenth {tenth(tp, True):.0f}, min {min(v for _, v in tp):.0f}, max {max(v for _, v in tp):.0f}")
    for name, pts in rss:
        if pts:
            print(f"rss {name}: first tenth {tenth(pts, False):.0f} MB, last tenth {tenth(pts, True):.0f} MB, max {max(v for _, v in pts):.0f} MB")
    for name, pts in tables:
        print(f"rows {name}: first {pts[0][1]:.0f}, max {max(v for _, v in pts):.0f}, last {pts[-1][1]:.0f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--out", required=True)
    s.add_argument("--metrics", required=True)
    s.add_argument("--pid", action="append", default=[])
    s.add_argument("--db", action="append", default=[])
    s.add_argument("--interval", type=float, default=10.0)
    s.add_argument("--stop-file")
    q = sub.add_parser("plot")
    q.add_argument("csv")
    q.add_argument("svg")
    q.add_argument("--title")
    args = p.parse_args()
    if args.cmd == "sample":
        if args.interval <= 0:
            sys.exit("soak.py: --interval must be positive")
        sample(args)
    else:
        plot(args)


if __name__ == "__main__":
    main()
