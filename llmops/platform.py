"""Bring the platform up on the embedded default (``llmops up``) and the headless demo (``llmops demo``).

``up`` runs, as child processes in their own sessions: the simulator, the SMTP sink (.eml files),
the MLflow server (SQLite + local artifacts) and ``airflow standalone`` (api-server, scheduler,
dag-processor, triggerer; LocalExecutor on SQLite). It waits for each to be healthy, unpauses the
project's DAGs, optionally triggers llm_batch once and reports, then waits; Ctrl-C stops everything.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from llmops.pricing import usd
from llmops.settings import Settings


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def smtp_connection_env(settings: Settings) -> str:
    """``smtp_default`` as an Airflow connection (JSON) pointing at the local SMTP sink."""
    return json.dumps(
        {
            "conn_type": "smtp",
            "host": settings.smtp_host,
            "port": settings.smtp_port,
            "extra": {
                "disable_ssl": True,
                "disable_tls": True,
                "from_email": settings.mail_from,
                "retry_limit": 0,
                "timeout": 10,
            },
        }
    )


def airflow_env(settings: Settings, airflow_home: Path, api_port: int) -> dict[str, str]:
    """Environment for every Airflow process of the embedded platform."""
    venv_bin = str(Path(sys.executable).parent)
    # never hand a caller's MLflow run context to the platform's tasks (it names another tracking store's ids)
    context = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_ACTIVE_MODEL_ID")
    env = {k: v for k, v in os.environ.items() if k not in context}
    env.update(
        {
            "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(settings.home / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(settings.home / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:ADMIN",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(airflow_home / "passwords.json"),
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__BASE_URL": f"http://localhost:{api_port}",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "20",
            "AIRFLOW__EMAIL__FROM_EMAIL": settings.mail_from,
            "AIRFLOW_CONN_SMTP_DEFAULT": smtp_connection_env(settings),
            "LLMOPS_HOME": str(settings.home),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_TRACKING_URI": settings.mlflow_uri,
            "NO_PROXY": "localhost,127.0.0.1",
        }
    )
    return env


class Supervisor:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.procs[name] = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def check(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with code {p.returncode}; see {self.log_dir / (name + '.log')}")

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 25
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _wait(what: str, probe: Any, sup: Supervisor, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sup.check()
        try:
            result = probe()
            if result:
                return result
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            pass
        time.sleep(1)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f} s")


def _password(airflow_home: Path) -> str:
    path = airflow_home / "passwords.json"
    if not path.exists():
        airflow_home.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"admin": secrets.token_urlsafe(12)}))
        path.chmod(0o600)
    return str(json.loads(path.read_text())["admin"])


def run_up(
    settings: Settings, *, airflow_port: int = 8080, mlflow_port: int = 5000, trigger: bool = True, block: bool = True
) -> int:
    from llmops.ledger import Ledger

    data = settings.data_path
    airflow_home = data / "airflow"
    for port, what in (
        (airflow_port, "Airflow"),
        (mlflow_port, "MLflow"),
        (settings.simulator_port, "simulator"),
        (settings.smtp_port, "SMTP sink"),
    ):
        if port_open(port):
            print(
                f"error: port {port} for the {what} is already in use — fix: stop what uses it or choose another port",
                file=sys.stderr,
            )
            return 2
    password = _password(airflow_home)
    Ledger(settings.ledger_database_url).dispose()
    env = airflow_env(settings, airflow_home, airflow_port)
    env["LLMOPS_SIMULATOR_PORT"] = str(settings.simulator_port)
    env.setdefault("LLMOPS_MLFLOW_UI_URL", f"http://localhost:{mlflow_port}")  # links on the LLMOps page
    py = sys.executable
    bindir = Path(py).parent
    sup = Supervisor(data / "logs")

    def _stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _stop)  # also when started in the background, where SIGINT is ignored
    signal.signal(signal.SIGTERM, _stop)
    api = f"http://127.0.0.1:{airflow_port}"
    try:
        sup.start("simulator", [py, "-m", "llmops", "sim", "serve"], env, settings.home)
        sup.start("mailsink", [py, "-m", "llmops", "mail", "serve"], env, settings.home)
        (data / "mlartifacts").mkdir(parents=True, exist_ok=True)
        sup.start(
            "mlflow",
            [
                str(bindir / "mlflow"),
                "server",
                "--backend-store-uri",
                settings.mlflow_uri,
                "--default-artifact-root",
                str(data / "mlartifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
            ],
            env,
            settings.home,
        )
        sup.start("airflow", [str(bindir / "airflow"), "standalone"], env, settings.home)
        print("starting: simulator, SMTP sink, MLflow, Airflow (logs in", sup.log_dir, ")", flush=True)
        _wait("simulator", lambda: httpx.get(f"{settings.simulator_url.removesuffix('/v1')}/health").is_success, sup)
        _wait("SMTP sink", lambda: port_open(settings.smtp_port), sup)
        _wait(
            "Airflow",
            lambda: httpx.get(f"{api}/api/v2/monitor/health", timeout=5).json()["scheduler"]["status"] == "healthy",
            sup,
            timeout=300,
        )
        token = _wait(
            "Airflow login",
            lambda: httpx.post(
                f"{api}/auth/token", json={"username": "admin", "password": password}, timeout=10
            ).json()["access_token"],
            sup,
        )
        headers = {"Authorization": f"Bearer {token}"}

        def dags_loaded() -> list[str]:
            r = httpx.get(f"{api}/api/v2/dags", params={"tags": "llmops"}, headers=headers, timeout=10)
            ids = [d["dag_id"] for d in r.json()["dags"]]
            return ids if "llm_batch" in ids else []

        dag_ids = _wait("the llmops DAGs", dags_loaded, sup, timeout=180)
        for dag_id in dag_ids:
            httpx.patch(f"{api}/api/v2/dags/{dag_id}", json={"is_paused": False}, headers=headers, timeout=10)
        _wait(
            "MLflow",
            lambda: httpx.get(f"http://127.0.0.1:{mlflow_port}/health", timeout=5).is_success,
            sup,
            timeout=180,
        )
        print(f"\nAirflow UI   http://localhost:{airflow_port}   login: admin / {password}", flush=True)
        print(f"MLflow UI    http://localhost:{mlflow_port}")
        print(f"LLMOps page  http://localhost:{airflow_port}/plugin/llmops   metrics: /llmops/metrics")
        print(f"Simulator    {settings.simulator_url}")
        print(f"SMTP sink    {settings.smtp_host}:{settings.smtp_port} -> {settings.mail_path}/*.eml")
        print(f"DAGs         {', '.join(sorted(dag_ids))} (unpaused)")
        if trigger:
            _trigger_and_report(api, headers, settings, sup)
        print("\nThe platform is up. Press Ctrl-C to stop everything.", flush=True)
        if not block:
            return 0
        while True:
            sup.check()
            time.sleep(2)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if block:
            sup.stop()


def trigger_run(api: str, headers: dict[str, str], dag_id: str = "llm_batch", attempts: int = 5) -> str:
    """Trigger a manual run with the form's defaults; its run id.

    The embedded SQLite metadata database can make the API answer 5xx while the scheduler starts the first
    scheduled runs of freshly unpaused DAGs (seen once on `make up`). A 5xx may still have created the run, so
    before posting again the manual runs created since the first post are looked up: one run, never two."""
    url = f"{api}/api/v2/dags/{dag_id}/dagRuns"
    since = datetime.now(UTC) - timedelta(seconds=5)  # the API server's clock is this machine's
    for attempt in range(1, attempts + 1):
        r = httpx.post(url, json={"logical_date": None, "conf": {}}, headers=headers, timeout=30)
        if r.status_code < 500:
            r.raise_for_status()
            return str(r.json()["dag_run_id"])
        time.sleep(min(2.0 * attempt, 10.0))
        made = httpx.get(
            url, params={"run_type": "manual", "run_after_gte": since.isoformat()}, headers=headers, timeout=30
        )
        if made.status_code == 200 and made.json().get("dag_runs"):
            return str(made.json()["dag_runs"][0]["dag_run_id"])
        if attempt < attempts:
            print(f"the Airflow API answered {r.status_code} to the trigger of {dag_id}; trying again", flush=True)
    r.raise_for_status()
    raise AssertionError("unreachable: a 5xx raises above")


def _trigger_and_report(api: str, headers: dict[str, str], settings: Settings, sup: Supervisor) -> None:
    run_id = trigger_run(api, headers)
    print(f"\ntriggered llm_batch run {run_id} with the form defaults ...", flush=True)

    def finished() -> str | None:
        state = httpx.get(f"{api}/api/v2/dags/llm_batch/dagRuns/{run_id}", headers=headers, timeout=10).json()["state"]
        return state if state in ("success", "failed") else None

    state = _wait("the llm_batch run", finished, sup, timeout=600)
    print(f"llm_batch {run_id}: {state}")
    _print_run(settings, run_id)


def _print_run(settings: Settings, run_id: str) -> bool:
    from llmops.ledger import Ledger

    led = Ledger(settings.ledger_database_url)
    try:
        run = led.batch_run(run_id)
        if run is None or run.status != "reconciled":
            print("no reconciled batch found for", run_id)
            return False
        counts = json.loads(run.counts)
        print(
            f"rows processed: {run.total_rows}  "
            + " ".join(f"{k}={counts.get(k, 0)}" for k in ("ok", "blocked", "denied", "failed", "deferred"))
        )
        for dept, nano in sorted(led.spend_by_department(run_id).items()):
            print(f"cost {dept}: ${usd(nano)}")
        print(f"outputs: {run.output_path}")
        print(f"ledger: {led.safe_url}")
        return True
    finally:
        led.dispose()


def run_demo(settings: Settings) -> int:
    """Run llm_batch once with ``dag.test()`` over the bundled sample data; print the summary."""
    from llmops.simulator import SimConfig, run_in_thread

    data = settings.data_path
    airflow_home = data / "airflow-demo"
    env = airflow_env(settings, airflow_home, free_port())
    for key in (
        "AIRFLOW_HOME",
        "AIRFLOW__CORE__DAGS_FOLDER",
        "AIRFLOW__CORE__PLUGINS_FOLDER",
        "AIRFLOW__CORE__LOAD_EXAMPLES",
        "AIRFLOW__CORE__EXECUTOR",
        "AIRFLOW_CONN_SMTP_DEFAULT",
        "LLMOPS_HOME",
        "LITELLM_LOCAL_MODEL_COST_MAP",
        "MLFLOW_DISABLE_TELEMETRY",
    ):
        os.environ[key] = env[key]
    sim = run_in_thread(SimConfig(port=0, api_key=settings.simulator_api_key.get_secret_value()))
    os.environ["LLMOPS_SIMULATOR_PORT"] = str(sim.port)
    print(f"simulator on {sim.url}; preparing Airflow metadata in {airflow_home} ...", flush=True)
    try:
        import logging

        from airflow.dag_processing.dagbag import DagBag
        from airflow.utils import db

        logging.getLogger("llmops.calls").setLevel(logging.WARNING)
        db.initdb()
        bag = DagBag(dag_folder=str(settings.home / "dags"))
        if bag.import_errors:
            print(f"error: DAG import errors: {bag.import_errors}", file=sys.stderr)
            return 1
        dag = bag.dags["llm_batch"]
        print("running llm_batch with dag.test() over sample:support_tickets.csv ...", flush=True)
        dr = dag.test()
        print(f"\nllm_batch {dr.run_id}: {dr.state}")
        ok = _print_run(settings, dr.run_id)
        return 0 if str(dr.state) == "success" and ok else 1
    finally:
        sim.stop()
