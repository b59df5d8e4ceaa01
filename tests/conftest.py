"""Test isolation: every session gets its own AIRFLOW_HOME and data folder; every test that writes
gets its own ledger. The simulator runs for real on a free loopback port."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="llmops-tests-"))
os.environ["AIRFLOW_HOME"] = str(_SESSION_TMP / "airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["LLMOPS_HOME"] = str(ROOT)
os.environ["LLMOPS_DATA_DIR"] = str(_SESSION_TMP / "data")
for _k in [k for k in os.environ if k.startswith("LLMOPS_") and k not in ("LLMOPS_HOME", "LLMOPS_DATA_DIR")]:
    del os.environ[_k]

import pytest  # noqa: E402

from llmops.settings import Settings, load_settings  # noqa: E402
from llmops.simulator import SimConfig, run_in_thread  # noqa: E402

SIM_KEY = "sim-local-key"


@pytest.fixture(scope="session")
def sim():
    server = run_in_thread(SimConfig(port=0, api_key=SIM_KEY))
    os.environ["LLMOPS_SIMULATOR_PORT"] = str(server.port)
    yield server
    server.stop()


@pytest.fixture
def settings(tmp_path: Path, sim) -> Settings:
    return load_settings(home=ROOT, data_dir=tmp_path / "data", simulator_port=sim.port)


@pytest.fixture
def gateway(settings: Settings):
    from llmops.gateway import Gateway

    gw = Gateway(settings)
    yield gw
    gw.close()


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


def write_policy(path: Path, **changes: object) -> Path:
    """Copy llmops.yaml with top-level edits applied (keys joined with "/")."""
    import yaml

    data = yaml.safe_load((ROOT / "llmops.yaml").read_text())
    for dotted, value in changes.items():
        node = data
        parts = dotted.split("/")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path
