"""CI variant of the throughput benchmark: the engine against plain litellm on the simulator, judged on
ratios only (throughput / ceiling, CPU per request / bare litellm, 429 share) with regression margins,
and exactly: zero retries before Retry-After, ledger rows = records, summed cost = billed cost.
Absolute times are printed, never asserted; a ratio miss is re-measured once (shared machines are
noisy). The full run and its targets: benchmarks/README.md."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_throughput_ci_variant(tmp_path):
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", MLFLOW_DISABLE_TELEMETRY="true")
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--ci"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    print(r.stdout)
    assert "| rpm-bound |" in r.stdout and "| faults" in r.stdout, r.stderr[-3000:]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
