"""`schemathesis run --checks all` against a live server: the schema and the server agree.

Every check schemathesis has (server errors, undocumented status codes and content types,
schema-valid requests rejected, schema-violating requests accepted, Allow headers, ...) over
every operation, with a fixed seed so a failure reproduces. Strings are generated as UTF-8
(``--generation-codec utf-8``): a lone surrogate is not a Unicode string, and no JSON client sends one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fixtures.tiny import ADMIN_TOKEN, serving

SEED = "1"
MAX_EXAMPLES = "50"


def test_schemathesis_all_checks_find_no_misfit(tiny, tmp_path):
    cli = Path(sys.executable).parent / "schemathesis"
    with serving(tiny.bundles / "compressed", tmp_path / "events.sqlite", tmp_path / "server.log") as (_, url):
        run = subprocess.run(
            [str(cli), "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", MAX_EXAMPLES,
             "--seed", SEED, "--generation-codec", "utf-8", "--header", f"Authorization: Bearer {ADMIN_TOKEN}"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    summary = run.stdout[-3000:]
    assert run.returncode == 0, summary
    assert " passed" in summary and "failures" not in summary.lower().split("summary")[-1], summary
