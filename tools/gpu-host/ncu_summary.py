#!/usr/bin/env python3
"""Summarises an Nsight Compute raw-page CSV per profiled kernel launch.

Input: `ncu --import REPORT --csv --page raw --print-units base --metrics LIST` (one header row of column names,
one row of units, one row per launch; ncu's own `==PROF==`/`==WARNING==` lines are skipped). Output: a CSV and a
markdown table with, per launch, the duration, DRAM bytes and achieved bandwidth, % of peak DRAM throughput, SM
throughput, achieved and theoretical occupancy, registers per thread and shared memory per block. A metric the
report does not hold prints as n/a. Python 3 standard library only.

    python3 tools/gpu-host/ncu_summary.py raw.csv --csv profile-summary.csv --md profile-summary.md [--title T]
"""
import argparse
import csv
import io
import sys

METRICS = [
    "gpu__time_duration.sum",
    "dram__bytes.sum",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "sm__warps_active.avg.pct_of_peak_sustained_active",
    "sm__maximum_warps_per_active_cycle_pct",
    "launch__registers_per_thread",
    "launch__shared_mem_per_block_static",
    "launch__shared_mem_per_block_dynamic",
    "launch__grid_size",
    "launch__block_size",
]

# Unit prefixes ncu prints (decimal for bytes, as its documentation states), to bring values to base units.
_TIME = {"nsecond": 1e-9, "ns": 1e-9, "usecond": 1e-6, "us": 1e-6, "msecond": 1e-3, "ms": 1e-3, "second": 1.0, "s": 1.0}
_BYTES = {"byte": 1.0, "b": 1.0, "kbyte": 1e3, "kb": 1e3, "mbyte": 1e6, "mb": 1e6, "gbyte": 1e9, "gb": 1e9,
          "tbyte": 1e12, "tb": 1e12}

COLUMNS = ["id", "kernel", "grid", "block", "duration_us", "dram_bytes", "dram_gbs", "dram_pct_of_peak",
           "sm_throughput_pct", "occupancy_achieved_pct", "occupancy_theoretical_pct", "registers_per_thread",
           "shared_bytes_per_block"]


def number(text):
    """A float from ncu's text ('1,234.5', '12'), or None for '', 'n/a' and the like."""
    if text is None:
        return None
    t = text.strip().replace(",", "")
    if t == "" or t.lower() in ("n/a", "nan", "-"):
        return None
    try:
        return float(t)
    except ValueError:
        return None


def scaled(value, unit, table):
    """`value` in the base unit of `table`; None where the value or its unit is unknown."""
    if value is None:
        return None
    u = (unit or "").strip().lower()
    u = u.split("/")[0]  # "byte/block", "register/thread"
    if u in table:
        return value * table[u]
    return None


def read_rows(text):
    """(header, units, data rows) of the raw page; lines that are not CSV records of the table are skipped."""
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    records = list(csv.reader(io.StringIO("\n".join(lines))))
    start = next((i for i, r in enumerate(records) if r and r[0] == "ID"), None)
    if start is None:
        raise ValueError("no ncu raw-page table (a header row starting with \"ID\") in the input")
    header = records[start]
    units = records[start + 1] if start + 1 < len(records) else [""] * len(header)
    data = [r for r in records[start + 2:] if len(r) == len(header)]
    return header, units, data


def summarise(text):
    """One dict per launch, keys COLUMNS; None where the report lacks the metric."""
    header, units, data = read_rows(text)
    col = {name: i for i, name in enumerate(header)}

    def cell(row, name):
        i = col.get(name)
        return (row[i], units[i] if i < len(units) else "") if i is not None else (None, "")

    def plain(row, name):
        return number(cell(row, name)[0])

    def base(row, name, table):
        value, unit = cell(row, name)
        return scaled(number(value), unit, table)

    out = []
    for row in data:
        duration_s = base(row, "gpu__time_duration.sum", _TIME)
        dram = base(row, "dram__bytes.sum", _BYTES)
        shared = [base(row, m, _BYTES)
                  for m in ("launch__shared_mem_per_block_static", "launch__shared_mem_per_block_dynamic")]
        grid = cell(row, "Grid Size")[0] or _fmt(plain(row, "launch__grid_size"))
        block = cell(row, "Block Size")[0] or _fmt(plain(row, "launch__block_size"))
        out.append({
            "id": cell(row, "ID")[0],
            "kernel": cell(row, "Kernel Name")[0],
            "grid": grid,
            "block": block,
            "duration_us": duration_s * 1e6 if duration_s is not None else None,
            "dram_bytes": dram,
            "dram_gbs": dram / duration_s / 1e9 if dram is not None and duration_s else None,
            "dram_pct_of_peak": plain(row, "dram__throughput.avg.pct_of_peak_sustained_elapsed"),
            "sm_throughput_pct": plain(row, "sm__throughput.avg.pct_of_peak_sustained_elapsed"),
            "occupancy_achieved_pct": plain(row, "sm__warps_active.avg.pct_of_peak_sustained_active"),
            "occupancy_theoretical_pct": plain(row, "sm__maximum_warps_per_active_cycle_pct"),
            "registers_per_thread": plain(row, "launch__registers_per_thread"),
            "shared_bytes_per_block": sum(shared) if all(s is not None for s in shared) else None,
        })
    return out


def _fmt(v, digits=None):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if digits is None:
        return str(int(v)) if float(v).is_integer() else f"{v:g}"
    return f"{v:,.{digits}f}"


def write_csv(rows, stream):
    w = csv.writer(stream, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(["n/a" if r[c] is None else r[c] for c in COLUMNS])


def write_markdown(rows, stream, title):
    stream.write(f"# {title}\n\n")
    stream.write("| ID | kernel | grid | block | duration (µs) | DRAM bytes | DRAM GB/s | % of peak DRAM | SM throughput % "
                 "| occupancy achieved / theoretical % | registers / thread | shared memory / block (bytes) |\n")
    stream.write("|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    for r in rows:
        occ = f"{_fmt(r['occupancy_achieved_pct'], 1)} / {_fmt(r['occupancy_theoretical_pct'], 1)}"
        stream.write(f"| {r['id']} | `{r['kernel']}` | {r['grid']} | {r['block']} | {_fmt(r['duration_us'], 1)} "
                     f"| {_fmt(r['dram_bytes'], 0)} | {_fmt(r['dram_gbs'], 1)} | {_fmt(r['dram_pct_of_peak'], 1)} "
                     f"| {_fmt(r['sm_throughput_pct'], 1)} | {occ} | {_fmt(r['registers_per_thread'], 0)} "
                     f"| {_fmt(r['shared_bytes_per_block'], 0)} |\n")
    if not rows:
        stream.write("\nNo kernel launch was profiled (check the NVTX filter and that NVTX ranges were on).\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("raw_csv", help="ncu --import REPORT --csv --page raw --print-units base output ('-': stdin)")
    p.add_argument("--csv", required=True, help="summary CSV to write")
    p.add_argument("--md", required=True, help="summary markdown to write")
    p.add_argument("--title", default="Nsight Compute summary")
    a = p.parse_args(argv)
    if a.raw_csv == "-":
        text = sys.stdin.read()
    else:
        with open(a.raw_csv, encoding="utf-8") as f:
            text = f.read()
    rows = summarise(text)
    with open(a.csv, "w", encoding="utf-8", newline="") as f:
        write_csv(rows, f)
    with open(a.md, "w", encoding="utf-8") as f:
        write_markdown(rows, f, a.title)
    print(f"ncu_summary: {len(rows)} kernel launch(es) -> {a.csv}, {a.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
