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
TICKET = {"subject": "Refund please", "body": "I was charged twice, refund one payment. Mail me at a.b@example.com"}


def ticket_request(**kw: object):
    """A support-ticket classification request by hana.sato (support); keyword arguments override."""
    from llmops.types import Request

    base: dict[str, object] = dict(
        user="hana.sato@example.com",
        department="support",
        prompt="support_ticket_classify",
        variables=dict(TICKET),
        record_key="r1",
        run_id="run",
    )
    base.update(kw)
    return Request(**base)  # type: ignore[arg-type]


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


@pytest.fixture(scope="session")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture(scope="session")
def airflow_db():
    from airflow.utils import db

    db.initdb()


def add_eval_result(ledger, *, night: str, overall: float, **kw: object) -> None:
    """One nightly result of support_ticket_classify 1.1.0 on sim-small (keyword arguments override)."""
    from llmops.ledger import EvalResult

    row: dict[str, object] = dict(
        night=night,
        prompt_name="support_ticket_classify",
        prompt_version="1.1.0",
        model="sim-small",
        cases=10,
        overall=overall,
        pass_rate=overall,
        metrics="{}",
        cost_nanousd=0,
        mlflow_run_id=None,
    )
    row.update(kw)
    with ledger.transaction() as s:
        s.add(EvalResult(**row))


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


class Inbox:
    """A real SMTP server on loopback (aiosmtpd) that keeps every message it receives."""

    def __init__(self) -> None:
        import email.message

        self.messages: list[email.message.Message] = []

    async def handle_DATA(self, server, session, envelope):
        import email

        msg = email.message_from_bytes(envelope.original_content or envelope.content)
        msg["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        self.messages.append(msg)
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list:
        return [m for m in self.messages if address in m["X-Envelope-To"]]


@pytest.fixture
def inbox(monkeypatch):
    """Start the inbox and point Airflow's ``smtp_default`` connection at it."""
    import json

    from aiosmtpd.controller import Controller

    from llmops.platform import free_port

    box = Inbox()
    port = free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port)
    ctl.start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DEFAULT",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": port,
                "extra": {
                    "disable_ssl": True,
                    "disable_tls": True,
                    "from_email": "llmops@localhost",
                    "retry_limit": 0,
                    "timeout": 10,
                },
            }
        ),
    )
    yield box
    ctl.stop()
