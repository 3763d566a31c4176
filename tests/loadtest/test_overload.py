"""loadtest.overload end to end on the tiny compressed bundle, with a queue small enough to shed."""

from __future__ import annotations

import json

from loadtest.overload import main as overload_main


def test_overload_sheds_with_fast_503s_and_recovers(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_MAX_QUEUE", "4")  # the server inherits it: 60 users overflow 4 places
    out = tmp_path / "overload"
    code = overload_main(["--bundle", str(tiny.bundles / "compressed"), "--dataset", "tiny", "--out", str(out),
                          "--users", "4", "--calibrate-seconds", "2", "--overload-users", "60", "--processes", "1",
                          "--overload-seconds", "4", "--recovery-seconds", "3", "--no-pin"])
    result = json.loads((out / "overload.json").read_text())
    assert code == 0, result
    over, recovery = result["overload"], result["recovery"]
    assert over["shed"] > 0 and over["accepted"] > 0 and over["other_failures"] == 0
    shed, accepted = over["processes"][0]["shed"], over["processes"][0]["accepted"]
    assert shed["count"] == over["shed"] and accepted["count"] == over["accepted"]
    assert recovery["failures"] == 0 and recovery["requests"] > 0
    assert set(result["server_rss_mb"]) == {"start", "after_calibrate", "after_overload", "after_recovery"}
    server = over["server_side"]  # every 503 Locust saw was counted by the server as shed
    assert sum(server["shed_by_reason"].values()) >= over["shed"] and server["shed_p99_s"] is not None
    assert server["accepted_p99_s"] is not None and server["queue_wait_p99_s"] is not None
    report = (out / "overload.md").read_text()
    assert "| overload |" in report and "shed by reason: " in report
