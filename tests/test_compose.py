"""Static validation of docker-compose.yml, the Dockerfile and .env.example (no Docker daemon, no pulls):
the file parses; every service has an image or a build; Airflow and MLflow commands parse with the real
CLIs; host ports are unique; named volumes are declared and bind mounts exist; healthchecks sit where the
official Airflow compose file has them; depends_on targets exist with valid conditions; every env var the
code reads is provided and every ``LLMOPS_*`` / ``AIRFLOW__*`` variable given is one the code knows."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
}
HEALTHCHECKED = {"postgres", "redis", "mlflow", "mailpit", "prometheus", "simulator", *AIRFLOW_SERVICES}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    return {k: str(v) for k, v in env.items()} if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def _command(svc: dict) -> list[str]:
    cmd = svc.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def test_services_images_and_topology(services):
    assert set(services) >= {
        "postgres",
        "redis",
        "airflow-init",
        *AIRFLOW_SERVICES,
        "mlflow",
        "mailpit",
        "prometheus",
        "statsd-exporter",
    }
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), f"{name}: neither image nor build"
    for name in (*AIRFLOW_SERVICES, "airflow-init", "mlflow"):
        assert services[name]["build"] == "." and services[name]["image"].startswith("${LLMOPS_IMAGE")
    assert _env(services["airflow-worker"])["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_airflow_commands_parse_with_the_real_cli(services):
    from airflow.cli.cli_parser import get_parser

    parser = get_parser()
    for name, sub in AIRFLOW_SERVICES.items():
        cmd = _command(services[name])
        assert " ".join(cmd) == sub, name
        args = parser.parse_args(cmd)
        assert callable(args.func), name
    init = services["airflow-init"]["command"][-1]
    for line in ("airflow db migrate", "llmops db migrate", 'mlflow db upgrade "$${MLFLOW_BACKEND_STORE_URI}"'):
        assert line in init
    assert "AIRFLOW_ADMIN_PASSWORD" in init and "passwords.json" in init


def test_mlflow_server_command(services):
    import click
    from mlflow.cli import cli

    svc = services["mlflow"]
    assert svc["entrypoint"] == ["mlflow"]
    cmd = _command(svc)
    ctx = cli.make_context("mlflow", list(cmd), resilient_parsing=False)
    sub = cli.get_command(ctx, cmd[0])
    assert isinstance(sub, click.Command)
    sctx = sub.make_context("server", cmd[1:])
    assert sctx.params["backend_store_uri"].startswith("postgresql+psycopg2://") and "@postgres/mlflow" in cmd[2]
    assert sctx.params["artifacts_destination"] == "/mlartifacts"
    assert "mlflow" in sctx.params["allowed_hosts"] and sctx.params["x_frame_options"] == "NONE"
    assert sctx.params["host"] == "0.0.0.0"
    assert _env(svc)["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert any(v.startswith("mlflow-artifacts:") for v in svc["volumes"])


def test_ports_volumes_healthchecks_depends_on(compose, services):
    host_ports = []
    for svc in services.values():
        for p in svc.get("ports", []):
            host_ports.append(str(p).split(":")[0])
    assert len(host_ports) == len(set(host_ports)), host_ports

    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith((".", "/")):
                assert (ROOT / src).exists(), f"{name}: bind mount {src} does not exist"
            else:
                assert src in declared, f"{name}: volume {src} is not declared"

    for name in HEALTHCHECKED:
        hc = services[name].get("healthcheck")
        assert hc and hc["test"], f"{name}: no healthcheck"
    assert "/api/v2/version" in str(services["airflow-apiserver"]["healthcheck"]["test"])
    assert ":8974/health" in str(services["airflow-scheduler"]["healthcheck"]["test"])
    assert _env(services["airflow-scheduler"])["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"

    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        for target, spec in deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps):
            assert target in services, f"{name} depends on unknown {target}"
            cond = (spec or {}).get("condition", "service_started")
            assert cond in ("service_started", "service_healthy", "service_completed_successfully")
            if cond == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits for {target} health, which has none"
            if cond == "service_completed_successfully":
                assert target == "airflow-init"
    for name in AIRFLOW_SERVICES:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"

    secrets = compose.get("secrets") or {}
    for name, svc in services.items():
        for s in svc.get("secrets", []):
            assert s in secrets, f"{name}: secret {s} is not declared"


def _code_env_reads() -> set[str]:
    """Environment variables the project's code reads by name (os.environ / getenv)."""
    pattern = re.compile(r"""os\.(?:environ(?:\.get)?\s*[\[(]|getenv\()\s*["']([A-Z][A-Z0-9_]+)["']""")
    membership = re.compile(r"""["']([A-Z][A-Z0-9_]+)["']\s+(?:not\s+)?in\s+os\.environ""")
    names: set[str] = set()
    for folder in ("llmops", "dags", "plugins"):
        for f in (ROOT / folder).rglob("*.py"):
            src = f.read_text()
            names |= set(pattern.findall(src)) | set(membership.findall(src))
    return names


def test_every_env_var_the_code_reads_is_provided(services):
    from airflow.configuration import conf

    from llmops.settings import Settings

    env = _env(services["airflow-worker"])
    api_env = _env(services["airflow-apiserver"])
    assert env.keys() - {"DUMB_INIT_SETSID"} == api_env.keys()

    # names the code reads directly (LLMOPS_HOME in the adapter, LLMOPS_TIMEZONE in the DAGs, ...)
    reads = _code_env_reads()
    assert {"LLMOPS_HOME", "LLMOPS_TIMEZONE"} <= reads
    missing = {n for n in reads if n.startswith(("LLMOPS_", "MLFLOW_", "LITELLM_")) and n not in env}
    missing -= {"LLMOPS_SIMULATOR_PORT"} if "LLMOPS_SIMULATOR_PORT" in env else set()
    assert not missing, f"read by the code but not provided: {sorted(missing)}"

    # every LLMOPS_* given is a real settings field; those a container needs are set
    fields = {f"LLMOPS_{name.upper()}" for name in Settings.model_fields}
    given = {k for k in env if k.startswith("LLMOPS_")}
    assert given <= fields, f"unknown settings: {sorted(given - fields)}"
    must = {
        "LLMOPS_HOME",
        "LLMOPS_DATA_DIR",
        "LLMOPS_LEDGER_URL",
        "LLMOPS_MLFLOW_TRACKING_URI",
        "LLMOPS_SIMULATOR_HOST",
        "LLMOPS_SIMULATOR_PORT",
        "LLMOPS_SMTP_HOST",
        "LLMOPS_SMTP_PORT",
        "LLMOPS_METRICS_TOKEN",
        "LLMOPS_TIMEZONE",
    }
    assert must <= given, sorted(must - given)
    assert (
        env["LLMOPS_LEDGER_URL"].startswith("postgresql+psycopg2://")
        and "@postgres/llmops_ledger" in env["LLMOPS_LEDGER_URL"]
    )
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True" and env["MLFLOW_DISABLE_TELEMETRY"] == "true"

    # every AIRFLOW__SECTION__KEY given is an option Airflow knows (a typo would be silently ignored)
    conf.load_providers_configuration()  # [celery] and other provider sections
    known = conf.configuration_description
    for key in (k for k in env if k.startswith("AIRFLOW__")):
        _, section, option = key.lower().split("__", 2)
        assert option in known.get(section, {}).get("options", {}), key
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert (
        env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
        or "@redis:6379" in env["AIRFLOW__CELERY__BROKER_URL"]
    )


def test_env_example_covers_every_interpolated_variable():
    text = COMPOSE.read_text()
    interpolated = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    example = {
        line.split("=", 1)[0].lstrip("# ").strip()
        for line in (ROOT / ".env.example").read_text().splitlines()
        if ("=" in line and not line.startswith("# "))
        or line.startswith("# AIRFLOW_CONN_")
        or line.startswith("# LLMOPS_")
    }
    required = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?", text))
    assert required <= example, sorted(required - example)
    assert interpolated - {"LLMOPS_IMAGE"} <= example, sorted(interpolated - example)
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_dockerfile_installs_the_locked_package():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.2(-python3\.11)?$", text, re.M)
    assert "uv export --frozen --no-dev" in text and "--require-hashes" in text
    for src in re.findall(r"^COPY (?:--chown=\S+ )?(.+) \S+$", text, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), part


def test_prometheus_scrapes_the_plugin_and_statsd(services):
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["llmops"]["metrics_path"] == "/llmops/metrics"
    assert jobs["llmops"]["static_configs"][0]["targets"] == ["airflow-apiserver:8080"]
    assert jobs["llmops"]["authorization"]["credentials_file"] == "/run/secrets/metrics_token"
    assert jobs["airflow-statsd"]["static_configs"][0]["targets"] == ["statsd-exporter:9102"]
    env = _env(services["airflow-scheduler"])
    assert env["AIRFLOW__METRICS__STATSD_ON"] == "true" and env["AIRFLOW__METRICS__STATSD_HOST"] == "statsd-exporter"
    yaml.safe_load((ROOT / "deploy/statsd/mapping.yml").read_text())["mappings"]
