"""Run every benchmark in its CPU mode and print one table of their figures.

    python benchmarks/run_all.py                 # all of them (tens of minutes on 2 cores)
    python benchmarks/run_all.py adapt vocab     # some of them
    python benchmarks/run_all.py --list

Each benchmark is a script `bench_NAME.py` that prints its own side-by-side table and, for
this summary, one line per headline figure:

    RESULT {"benchmark": "clean", "figure": "documents/s", "ours": 2388, "baseline": 395,
            "baseline_name": "single-process langdetect cleaner"}

A benchmark that fails is listed with its exit status and the end of its output; the
others still run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
# CPU-mode arguments that keep each run to a few minutes on 2 cores.
QUICK = {
    "adapt": [],
    "clean": ["--mb", "5"],
    "gpu": ["--cpu-check", "--output", ".bench/gpu-speed-cpu-check.txt", "--adapt", "defaults", "trl-packing",
            "--instruct", "defaults"],  # the GPU script's CPU mode: its code paths, no figures
    "instruct": [],
    "moe": ["--seq-length", "64", "--steps", "1"],
    "prefer": ["--steps", "2", "--warmup-steps", "1"],
    "stream_resume": [],
    "translate": [],
    "vocab": [],
    "weightdiff": [],
}
PREFIX = "RESULT "


def benchmarks() -> list[str]:
    return sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))


def parse_results(output: str) -> list[dict]:
    rows = []
    for line in output.splitlines():
        if line.startswith(PREFIX):
            try:
                rows.append(json.loads(line[len(PREFIX):]))
            except json.JSONDecodeError:
                rows.append({"figure": f"unreadable result line: {line[:80]}"})
    return rows


def run_one(name: str) -> tuple[list[dict], float, int, str]:
    script = HERE / f"bench_{name}.py"
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(script), *QUICK.get(name, [])], capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    return parse_results(proc.stdout), time.time() - t0, proc.returncode, output


def table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args()
    available = benchmarks()
    if args.list:
        print("\n".join(available))
        return 0
    unknown = [n for n in args.names if n not in available]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}", file=sys.stderr)
        return 2
    rows = [("benchmark", "figure", "llamantino", "baseline", "ratio", "baseline is", "s")]
    failed = 0
    for name in args.names or available:
        print(f"=== bench_{name}.py {' '.join(QUICK.get(name, []))}", flush=True)
        results, seconds, code, output = run_one(name)
        print(output.rstrip(), flush=True)
        if code != 0:
            failed += 1
            rows.append((name, f"FAILED (exit {code})", "", "", "", "", f"{seconds:.0f}"))
            continue
        if not results:
            rows.append((name, "(no RESULT line)", "", "", "", "", f"{seconds:.0f}"))
        for r in results:
            ours, base = r.get("ours"), r.get("baseline")
            ratio = r.get("ratio") or (ours / base if isinstance(ours, (int, float)) and base else None)
            rows.append((name, r.get("figure", ""), fmt(ours), fmt(base), f"{ratio:.2f}x" if ratio else "",
                         r.get("baseline_name", ""), f"{seconds:.0f}"))
    print("\n" + table(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
