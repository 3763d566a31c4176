"""The memory profiler finds a child's peak and names the phase it happened in."""

from __future__ import annotations

import json
import sys

from benchmarks.memory_profile import main

# A parent that logs two phases and, in the second, starts a child holding ~300 MB: the peak
# belongs to the tree (parent + child), not to either process alone.
SCRIPT = """
import subprocess, sys, time
print("INFO job: small phase", flush=True)
time.sleep(1.2)
print("INFO job: big phase", flush=True)
child = subprocess.Popen([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
                          "import time; time.sleep(1.5)"])
child.wait()
print("INFO job: done", flush=True)
"""


def test_peak_is_the_trees_and_is_attributed_to_its_phase(tmp_path, capsys):
    out = tmp_path / "profile"
    assert main(["--out", str(out), "--", sys.executable, "-c", SCRIPT]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["peak"]["rss_mb"] > 300
    assert result["peak"]["processes"] == 2
    assert result["peak"]["phase"] == "INFO job: big phase"
    small = next(span for span in result["phases"] if span["phase"] == "INFO job: small phase")
    assert small["peak_mb"] < 150
    assert "INFO job: done" in out.with_suffix(".log").read_text()
    assert out.with_suffix(".png").stat().st_size > 0
    assert "big phase" in out.with_suffix(".md").read_text()


def test_a_failing_command_keeps_its_exit_code(tmp_path):
    assert main(["--out", str(tmp_path / "p"), "--", sys.executable, "-c", "raise SystemExit(3)"]) == 3
