"""A chunk process SIGKILLed mid-run, then retried: every record ends in exactly one terminal state,
records already final are not called again, and nothing is billed twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from llmops.batch import BatchSpec, plan_batch, reconcile
from llmops.gateway import Gateway
from llmops.ledger import is_final
from llmops.settings import load_settings
from llmops.simulator import SimConfig, run_in_thread
from tests.conftest import ROOT, SIM_KEY

CHUNK = """
import json, sys
from llmops.settings import load_settings
from llmops.gateway import Gateway
from llmops.batch import run_chunk
plan = json.load(open(sys.argv[1]))
print(json.dumps(run_chunk(Gateway(load_settings()), plan, 0)))
"""


def test_sigkill_mid_chunk_then_retry(tmp_path: Path):
    srv = run_in_thread(SimConfig(port=0, latency_scale=8, api_key=SIM_KEY))  # ~0.4 s per call
    try:
        env = dict(
            os.environ,
            LLMOPS_DATA_DIR=str(tmp_path / "data"),
            LLMOPS_SIMULATOR_PORT=str(srv.port),
            LLMOPS_CONCURRENCY="2",
            LLMOPS_HOME=str(ROOT),
        )
        settings = load_settings(home=ROOT, data_dir=tmp_path / "data", simulator_port=srv.port)
        gw = Gateway(settings)
        plan = plan_batch(
            gw,
            BatchSpec(
                prompt="support_ticket_classify",
                input="sample:support_tickets.csv",
                department="support",
                user="hana.sato@example.com",
                run_id="killme",
                chunk_size=100,
            ),
        )
        plan_file = tmp_path / "plan.json"
        plan_file.write_text(json.dumps(plan))

        proc = subprocess.Popen([sys.executable, "-c", CHUNK, str(plan_file)], env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = [r for r in gw.ledger.run_rows("killme") if is_final(r)]
            if len(done) >= 6:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        snapshot = {
            r.request_key: (r.status, r.cost_nanousd, r.updated_at, r.attempts)
            for r in gw.ledger.run_rows("killme")
            if is_final(r)
        }
        assert 6 <= len(snapshot) < 25, "the kill must land mid-chunk"
        assert not (Path(plan["output_dir"]) / "part-00000.parquet").exists()

        retry = subprocess.run(
            [sys.executable, "-c", CHUNK, str(plan_file)], env=env, capture_output=True, text=True, timeout=300
        )
        assert retry.returncode == 0, retry.stderr[-2000:]
        summary = reconcile(gw, plan)
        assert sum(summary["counts"].values()) == 25 and summary["counts"]["ok"] == 24

        rows = gw.ledger.run_rows("killme")
        assert len(rows) == 25 and len({r.record_key for r in rows}) == 25  # one row per record
        assert all(is_final(r) and r.reserved_nanousd == 0 for r in rows)
        for r in rows:  # what was final before the kill was replayed, not called or billed again
            if r.request_key in snapshot:
                assert (r.status, r.cost_nanousd, r.updated_at, r.attempts) == snapshot[r.request_key]
        import pandas as pd

        out = pd.read_parquet(summary["output"])
        assert round(out["cost_usd"].sum(), 9) == round(sum(r.cost_nanousd for r in rows) / 1e9, 9)
    finally:
        srv.stop()
