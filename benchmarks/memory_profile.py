"""Peak memory of a command, attributed to its phases: the RSS of the whole process tree, sampled.

    python -m benchmarks.memory_profile --out reports/compression/synthetic-1m/memory -- \\
        .venv/bin/python -m compression --model ... --dataset synthetic-1m --out ...

`ru_maxrss` gives one process's peak; a job that trains a student in a child process holds
memory in two at once, so the figure that matters is the tree's sum at each moment. Each sample
is tagged with the last log line the command printed before it (its phase), so the report says
what the job was doing at its peak. Writes OUT.json, OUT.md and OUT.png; the command's output is
passed through and kept in OUT.log.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

SAMPLE_S = 0.5
MAX_KEPT_SAMPLES = 500
# Progress-bar redraws are not phases: only log lines ("INFO module: ...") name one.
PHASE_LINE = re.compile(r"^(INFO|WARNING)\s+\S+:\s")


def tree_rss_mb(root: psutil.Process) -> tuple[float, int]:
    """(summed RSS in MB, process count) of ``root`` and its live descendants."""
    total, count = 0, 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0
    for process in processes:
        try:
            total += process.memory_info().rss
            count += 1
        except psutil.Error:  # ended between listing and reading
            continue
    return total / 2**20, count


class PhaseLog:
    """Passes the command's output through, keeps it, and remembers its last log line."""

    def __init__(self, stream, log_file):
        self.phase = "start"
        self._thread = threading.Thread(target=self._pump, args=(stream, log_file), daemon=True)
        self._thread.start()

    def _pump(self, stream, log_file) -> None:
        for raw in iter(stream.readline, b""):
            text = raw.decode(errors="replace")
            sys.stderr.write(text)
            log_file.write(text)
            for line in text.replace("\r", "\n").splitlines():
                if PHASE_LINE.match(line):
                    self.phase = line.strip()[:160]

    def join(self) -> None:
        self._thread.join(timeout=5)


def profile(command: list[str], log_path: Path) -> dict:
    started = time.perf_counter()
    samples = []
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        phases = PhaseLog(process.stdout, log_file)
        root = psutil.Process(process.pid)
        while process.poll() is None:
            rss, count = tree_rss_mb(root)
            if count:
                samples.append({"t": round(time.perf_counter() - started, 1), "rss_mb": round(rss, 1),
                                "processes": count, "phase": phases.phase})
            time.sleep(SAMPLE_S)
        phases.join()
    peak = max(samples, key=lambda s: s["rss_mb"]) if samples else {"rss_mb": 0.0, "t": 0.0, "phase": "-"}
    return {"command": " ".join(command), "returncode": process.returncode,
            "wall_seconds": round(time.perf_counter() - started, 1), "peak": peak,
            "phases": phase_peaks(samples), "samples": samples}


def phase_peaks(samples: list[dict]) -> list[dict]:
    """Consecutive samples with the same phase, each with its peak, in order of appearance."""
    spans: list[dict] = []
    for sample in samples:
        if not spans or spans[-1]["phase"] != sample["phase"]:
            spans.append({"phase": sample["phase"], "start_s": sample["t"], "peak_mb": sample["rss_mb"]})
        spans[-1]["peak_mb"] = max(spans[-1]["peak_mb"], sample["rss_mb"])
        spans[-1]["end_s"] = sample["t"]
    return spans


def markdown(result: dict, top: int = 8) -> str:
    peak = result["peak"]
    lines = ["# Memory profile", "", f"`{result['command']}`", "",
             f"Peak RSS of the process tree: **{peak['rss_mb']:,.0f} MB** at {peak['t']:.0f} s of "
             f"{result['wall_seconds']:.0f} s (exit code {result['returncode']}), sampled every {SAMPLE_S} s; "
             f"phase: `{peak['phase']}`", "",
             f"Phases with the highest peaks (top {top}):", "",
             "| phase (last log line) | from s | to s | peak MB |", "|---|--:|--:|--:|"]
    for span in sorted(result["phases"], key=lambda s: -s["peak_mb"])[:top]:
        text = span["phase"].replace("|", "\\|")
        lines.append(f"| `{text}` | {span['start_s']:.0f} | {span['end_s']:.0f} | {span['peak_mb']:,.0f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot([s["t"] for s in result["samples"]], [s["rss_mb"] / 1024 for s in result["samples"]])
    ax.set_xlabel("seconds")
    ax.set_ylabel("process tree RSS (GB)")
    ax.set_title(f"peak {result['peak']['rss_mb'] / 1024:.2f} GB")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output prefix: OUT.json, OUT.md, OUT.png, OUT.log")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to profile after --")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = profile(command, args.out.with_suffix(".log"))
    args.out.with_suffix(".md").write_text(markdown(result))
    plot(result, args.out.with_suffix(".png"))
    # The plot has every sample; the JSON keeps at most MAX_KEPT_SAMPLES of them (and the peak).
    samples = result["samples"]
    result["samples"] = samples[::max(1, len(samples) // MAX_KEPT_SAMPLES)]
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    sys.stderr.write(markdown(result))
    return result["returncode"]


if __name__ == "__main__":
    raise SystemExit(main())
