"""The CLI as a user runs it: a real subprocess, the simulator over HTTP, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT


def _run(args: list[str], tmp_path: Path, sim) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ, LLMOPS_DATA_DIR=str(tmp_path / "data"), LLMOPS_SIMULATOR_PORT=str(sim.port), LLMOPS_HOME=str(ROOT)
    )
    return subprocess.run(
        [sys.executable, "-m", "llmops", *args], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )


BASE = ["batch", "run", "--department", "support", "--user", "hana.sato@example.com"]


def test_batch_run_from_cli(tmp_path: Path, sim):
    out = tmp_path / "out.csv"
    r = _run(
        [
            *BASE,
            "--prompt",
            "support_ticket_classify@production",
            "--input",
            "sample:support_tickets.csv",
            "--output",
            str(out),
        ],
        tmp_path,
        sim,
    )
    assert r.returncode == 0, r.stderr
    assert "rows processed: 25" in r.stdout and "ok=24 blocked=1" in r.stdout and "cost support: $" in r.stdout
    assert len(pd.read_csv(out)) == 25


def test_dry_run(tmp_path: Path, sim):
    r = _run(
        [*BASE, "--prompt", "support_ticket_classify", "--input", "sample:support_tickets.csv", "--dry-run"],
        tmp_path,
        sim,
    )
    assert r.returncode == 0 and "nothing was called or billed" in r.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--prompt", "nope", "--input", "sample:support_tickets.csv"], "unknown prompt 'nope'"),
        (["--prompt", "support_ticket_classify@3.0.0", "--input", "sample:support_tickets.csv"], "no version 3.0.0"),
        (["--prompt", "support_ticket_classify", "--input", "bad.csv"], "malformed CSV"),
        (["--prompt", "support_ticket_classify", "--input", "nocol.csv"], "no column 'body'"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(tmp_path: Path, sim, args, needle):
    (tmp_path / "bad.csv").write_text('id,subject,body\n1,a,b\n2,"x,y,z\n3,a,b,c,d\n')
    (tmp_path / "nocol.csv").write_text("id,subject\n1,a\n")
    r = _run([*BASE, *args], tmp_path, sim)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "fix:" in lines[0], r.stderr
    ledger = tmp_path / "data" / "ledger.db"
    if ledger.exists():
        import sqlite3

        assert sqlite3.connect(ledger).execute("select count(*) from llm_calls").fetchone()[0] == 0


def test_unknown_department_and_user(tmp_path: Path, sim):
    r = _run(
        [
            "batch",
            "run",
            "--department",
            "marketing",
            "--user",
            "hana.sato@example.com",
            "--prompt",
            "support_ticket_classify",
            "--input",
            "sample:support_tickets.csv",
        ],
        tmp_path,
        sim,
    )
    assert r.returncode == 2 and "unknown department 'marketing'" in r.stderr
    r = _run(
        [
            "batch",
            "run",
            "--department",
            "support",
            "--user",
            "eve@example.com",
            "--prompt",
            "support_ticket_classify",
            "--input",
            "sample:support_tickets.csv",
        ],
        tmp_path,
        sim,
    )
    assert r.returncode == 2 and "unknown user 'eve@example.com'" in r.stderr


def test_prompts_commands(tmp_path: Path, sim):
    assert "contract_review" in _run(["prompts", "list"], tmp_path, sim).stdout
    assert _run(["prompts", "validate"], tmp_path, sim).returncode == 0
    r = _run(["prompts", "render", "contract_review@1.0.0", "--var", "contract_text=Pay in 10 days."], tmp_path, sim)
    assert r.returncode == 0 and "Pay in 10 days." in r.stdout
    r = _run(["prompts", "render", "contract_review@1.0.0"], tmp_path, sim)
    assert r.returncode == 2 and "missing variable 'contract_text'" in r.stderr


def test_budget_show(tmp_path: Path, sim):
    r = _run([*BASE, "--prompt", "support_ticket_classify", "--input", "sample:support_tickets.csv"], tmp_path, sim)
    assert r.returncode == 0, r.stderr
    spent = r.stdout.split("cost support: $")[1].split()[0]
    r = _run(["budget", "show", "--department", "support"], tmp_path, sim)
    assert r.returncode == 0, r.stderr
    [line] = [ln for ln in r.stdout.splitlines() if ln.startswith("support")]
    cells = line.split()
    assert cells[2] == "$200.00" or "200.00" in cells[2:4]  # the budget column
    assert f"{float(spent):.6f}" in line  # spent equals what the batch reported
    r = _run(["budget", "show", "--department", "nope"], tmp_path, sim)
    assert r.returncode == 2 and "unknown department 'nope'" in r.stderr
