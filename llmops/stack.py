"""The production topology as processes on one machine (``llmops stack up``) — docker-compose without Docker.

On the local PostgreSQL server it creates three databases named after the stack (``<name>_airflow``,
``<name>_ledger``, ``<name>_mlflow``), uses a Redis database as the Celery broker, runs the Airflow and
ledger migrations, then starts as child processes in their own sessions: the simulator, the SMTP sink,
the MLflow server on Postgres, and Airflow's api-server, scheduler, dag-processor, triggerer and a Celery
worker (CeleryExecutor). Every process gets the same environment (one JWT secret, one Fernet key, the
execution API URL of this api-server). Tasks go to a queue named after the stack, so stacks of several
people sharing one Redis never take each other's work. ``down`` drops the databases.
"""

from __future__ import annotations

import json
import random
import secrets
import subprocess
import sys
import time
from base64 import urlsafe_b64encode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, make_url, text

from llmops.errors import ConfigError
from llmops.platform import Supervisor, _password, _wait, airflow_env, free_port, port_open
from llmops.settings import Settings

DEFAULT_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer", "celery-worker")


def _check_name(name: str) -> str:
    if not name.replace("_", "").isalnum() or not name[0].isalpha() or len(name) > 40 or name.lower() != name:
        raise ConfigError(
            f"stack name {name!r} is not a plain lower-case identifier",
            "use letters, digits and underscores, starting with a letter (e.g. llmops_stack)",
        )
    return name


@dataclass
class StackConfig:
    name: str
    data_dir: Path
    postgres_url: str = DEFAULT_POSTGRES  # a server URL with rights to create databases
    redis_url: str = DEFAULT_REDIS
    redis_db: int = 0
    api_port: int = 8080
    mlflow_port: int = 5000
    simulator_port: int = 8765
    smtp_port: int = 2525
    workers: int = 1
    worker_concurrency: int = 4
    schedules: bool = True  # False: DAGs run only when triggered (tests; [scheduler] use_job_schedule)
    metrics_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def __post_init__(self) -> None:
        _check_name(self.name)

    def db_url(self, role: str, driver: str = "postgresql+psycopg2") -> str:
        url = make_url(self.postgres_url).set(drivername=driver, database=f"{self.name}_{role}")
        return url.render_as_string(hide_password=False)

    @property
    def databases(self) -> tuple[str, ...]:
        return tuple(f"{self.name}_{r}" for r in ("airflow", "ledger", "mlflow"))

    @property
    def queue(self) -> str:
        return self.name

    @property
    def broker_url(self) -> str:
        return f"{self.redis_url.rstrip('/')}/{self.redis_db}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"


def create_databases(cfg: StackConfig) -> None:
    engine = create_engine(cfg.postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            existing = set(conn.execute(text("SELECT datname FROM pg_database")).scalars())
            for db in cfg.databases:
                if db not in existing:
                    conn.execute(text(f'CREATE DATABASE "{db}"'))
    finally:
        engine.dispose()


def drop_databases(cfg: StackConfig) -> list[str]:
    engine = create_engine(cfg.postgres_url, isolation_level="AUTOCOMMIT")
    dropped = []
    try:
        with engine.connect() as conn:
            existing = set(conn.execute(text("SELECT datname FROM pg_database")).scalars())
            for db in cfg.databases:
                if db in existing:
                    conn.execute(text(f'DROP DATABASE "{db}" WITH (FORCE)'))
                    dropped.append(db)
    finally:
        engine.dispose()
    return dropped


def stack_env(settings: Settings, cfg: StackConfig) -> dict[str, str]:
    """The one environment every process of the stack shares (what docker-compose's x-airflow-common is)."""
    home = cfg.data_dir / "airflow"
    env = airflow_env(settings, home, cfg.api_port)
    fernet = urlsafe_b64encode(secrets.token_bytes(32)).decode()
    env.update(
        {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": cfg.db_url("airflow"),
            "AIRFLOW__CELERY__BROKER_URL": cfg.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + cfg.db_url("airflow", "postgresql"),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(cfg.worker_concurrency),
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": cfg.queue,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{cfg.api_port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://localhost:{cfg.api_port}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__FERNET_KEY": fernet,
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(cfg.schedules),
            "LLMOPS_DATA_DIR": str(cfg.data_dir),
            "LLMOPS_LEDGER_URL": cfg.db_url("ledger"),
            "LLMOPS_MLFLOW_TRACKING_URI": cfg.mlflow_url,
            "LLMOPS_MLFLOW_UI_URL": f"http://localhost:{cfg.mlflow_port}",
            "MLFLOW_TRACKING_URI": cfg.mlflow_url,
            "LLMOPS_SIMULATOR_PORT": str(cfg.simulator_port),
            "LLMOPS_SMTP_PORT": str(cfg.smtp_port),
            "LLMOPS_METRICS_TOKEN": cfg.metrics_token,
        }
    )
    conn = json.loads(env["AIRFLOW_CONN_SMTP_DEFAULT"])
    conn["port"] = cfg.smtp_port
    env["AIRFLOW_CONN_SMTP_DEFAULT"] = json.dumps(conn)
    return env


class Stack:
    """Start, wait for and stop the stack's processes."""

    def __init__(self, settings: Settings, cfg: StackConfig) -> None:
        self.settings = settings
        self.cfg = cfg
        self.sup = Supervisor(cfg.data_dir / "logs")
        self.env = stack_env(settings, cfg)
        self.password = ""
        self._token: str | None = None

    def _run(self, what: str, cmd: list[str], timeout: float = 600) -> None:
        log = self.sup.log_dir / f"{what}.log"
        with open(log, "ab") as fh:
            rc = subprocess.run(
                cmd, env=self.env, cwd=self.settings.home, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        if rc != 0:
            raise RuntimeError(f"{what} failed with exit code {rc}; see {log}")

    def start(self, *, wait: bool = True) -> None:
        cfg = self.cfg
        for port, what in (
            (cfg.api_port, "Airflow api-server"),
            (cfg.mlflow_port, "MLflow"),
            (cfg.simulator_port, "simulator"),
            (cfg.smtp_port, "SMTP sink"),
        ):
            if port_open(port):
                raise ConfigError(f"port {port} for the {what} is already in use", "stop what uses it or pick another")
        from sqlalchemy.exc import SQLAlchemyError

        from llmops.ledger import Ledger

        redis = make_url(cfg.redis_url.replace("redis://", "redis+x://", 1))
        if not port_open(redis.port or 6379, redis.host or "127.0.0.1"):
            raise ConfigError(f"Redis is not reachable at {cfg.redis_url}", "start Redis or pass --redis-url")
        try:
            create_databases(cfg)
        except SQLAlchemyError as exc:
            safe = make_url(cfg.postgres_url).render_as_string(hide_password=True)
            raise ConfigError(
                f"cannot create the stack's databases on {safe}: {type(exc).__name__}",
                "start PostgreSQL or pass --postgres-url with a role that may CREATE DATABASE",
            ) from None
        self.password = _password(cfg.data_dir / "airflow")
        bindir = Path(sys.executable).parent
        airflow = str(bindir / "airflow")
        py = sys.executable
        Ledger(cfg.db_url("ledger")).dispose()  # ledger migrations (Alembic)
        self._run("airflow-db-migrate", [airflow, "db", "migrate"])
        home = self.settings.home
        self.sup.start("simulator", [py, "-m", "llmops", "sim", "serve"], self.env, home)
        self.sup.start("mailsink", [py, "-m", "llmops", "mail", "serve"], self.env, home)
        (cfg.data_dir / "mlartifacts").mkdir(parents=True, exist_ok=True)
        self.sup.start(
            "mlflow",
            [
                str(bindir / "mlflow"),
                "server",
                "--backend-store-uri",
                cfg.db_url("mlflow"),
                "--artifacts-destination",
                str(cfg.data_dir / "mlartifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(cfg.mlflow_port),
                "--workers",
                "1",
            ],
            self.env,
            home,
        )
        self.sup.start("api-server", [airflow, "api-server", "--port", str(cfg.api_port)], self.env, home)
        self.sup.start("scheduler", [airflow, "scheduler"], self.env, home)
        self.sup.start("dag-processor", [airflow, "dag-processor"], self.env, home)
        self.sup.start("triggerer", [airflow, "triggerer"], self.env, home)
        for i in range(cfg.workers):
            self.sup.start(
                f"celery-worker-{i}",
                [
                    airflow,
                    "celery",
                    "worker",
                    "--queues",
                    cfg.queue,
                    "--concurrency",
                    str(cfg.worker_concurrency),
                    "--celery-hostname",
                    f"{cfg.name}-w{i}@%h",
                    "--skip-serve-logs",
                ],
                self.env,
                home,
            )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        cfg = self.cfg
        _wait(
            "simulator",
            lambda: httpx.get(f"http://127.0.0.1:{cfg.simulator_port}/health", timeout=5).is_success,
            self.sup,
        )
        _wait("SMTP sink", lambda: port_open(cfg.smtp_port), self.sup)

        def healthy() -> bool:
            h = httpx.get(f"{cfg.api}/api/v2/monitor/health", timeout=5).json()
            return all(h[k]["status"] == "healthy" for k in ("metadatabase", "scheduler", "triggerer", "dag_processor"))

        _wait("Airflow (api-server, scheduler, triggerer, dag-processor)", healthy, self.sup, timeout=300)
        _wait("Celery worker", self._worker_ready, self.sup, timeout=180)
        _wait("MLflow server", lambda: httpx.get(f"{cfg.mlflow_url}/health", timeout=5).is_success, self.sup, 240)

        def dags_loaded() -> bool:
            r = httpx.get(f"{cfg.api}/api/v2/dags", params={"tags": "llmops"}, headers=self.headers(), timeout=10)
            return {"llm_batch", "nightly_regression", "monthly_cost_report"} <= {d["dag_id"] for d in r.json()["dags"]}

        _wait("the llmops DAGs", dags_loaded, self.sup, timeout=240)

    def _worker_ready(self) -> bool:
        logs = [p for p in self.sup.log_dir.glob("celery-worker-*.log")]
        return bool(logs) and all(b" ready." in p.read_bytes() for p in logs)

    def token(self) -> str:
        if self._token is None:
            r = httpx.post(
                f"{self.cfg.api}/auth/token", json={"username": "admin", "password": self.password}, timeout=10
            )
            r.raise_for_status()
            self._token = str(r.json()["access_token"])
        return self._token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        r = httpx.post(
            f"{self.cfg.api}/api/v2/dags/{dag_id}/dagRuns",
            json={"logical_date": None, "conf": conf or {}},
            headers=self.headers(),
            timeout=30,
        )
        r.raise_for_status()
        return str(r.json()["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        r = httpx.get(f"{self.cfg.api}/api/v2/dags/{dag_id}/dagRuns/{run_id}", headers=self.headers(), timeout=30)
        r.raise_for_status()
        return str(r.json()["state"])

    def wait_runs(self, runs: dict[str, str], timeout: float = 600) -> dict[str, str]:
        """Wait until every ``{dag_id: run_id}`` has finished; return their states."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            self.sup.check()
            try:
                states = {d: self.run_state(d, r) for d, r in runs.items()}
            except httpx.TransportError:  # a busy api-server (it also serves the workers' execution API)
                time.sleep(3)
                continue
            if all(s in ("success", "failed") for s in states.values()):
                return states
            time.sleep(3)
        raise RuntimeError(f"runs did not finish within {timeout:.0f} s: {states}")

    def stop(self, *, drop: bool = False) -> list[str]:
        self.sup.stop()
        return drop_databases(self.cfg) if drop else []


def new_config(data_dir: Path, name: str | None = None, *, default_ports: bool = True, **kw: Any) -> StackConfig:
    """A stack config; ``default_ports=False`` picks free ports and a random Redis database (tests, parallel stacks)."""
    name = name or f"llmops_stack_{secrets.token_hex(4)}"
    if not default_ports:
        kw.setdefault("api_port", free_port())
        kw.setdefault("mlflow_port", free_port())
        kw.setdefault("simulator_port", free_port())
        kw.setdefault("smtp_port", free_port())
        kw.setdefault("redis_db", random.randint(1, 15))
    return StackConfig(name=name, data_dir=data_dir, **kw)


def env_summary(cfg: StackConfig) -> str:
    return "\n".join(
        [
            f"Airflow UI   http://localhost:{cfg.api_port}   (CeleryExecutor, queue {cfg.queue})",
            f"Broker       {cfg.broker_url}",
            f"LLMOps page  http://localhost:{cfg.api_port}/plugin/llmops   metrics: /llmops/metrics",
            f"MLflow UI    http://localhost:{cfg.mlflow_port}   (backend {cfg.name}_mlflow)",
            f"Ledger       {make_url(cfg.db_url('ledger')).render_as_string(hide_password=True)}",
            f"SMTP sink    127.0.0.1:{cfg.smtp_port}",
            f"Simulator    http://127.0.0.1:{cfg.simulator_port}/v1",
        ]
    )
