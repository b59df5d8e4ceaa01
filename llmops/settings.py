"""Typed settings from the environment (``LLMOPS_`` prefix).

Relative paths resolve against ``home`` (``LLMOPS_HOME``, default: the current directory), so the
same settings work from the CLI, from Airflow workers (whose cwd is elsewhere) and from tests.
Building settings never touches the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmops.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMOPS_", extra="forbid", frozen=True)

    home: Path = Field(default_factory=Path.cwd, description="Project root; relative paths resolve here.")
    data_dir: Path = Path("data")
    policy_file: Path = Path("llmops.yaml")
    prompts_dir: Path = Path("prompts")
    ledger_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite in the data folder.")
    mlflow_tracking_uri: str | None = None

    simulator_host: str = "127.0.0.1"
    simulator_port: int = Field(8765, ge=1, le=65535)
    simulator_api_key: SecretStr = SecretStr("sim-local-key")

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(2525, ge=1, le=65535)
    mail_from: str = "llmops@localhost"

    timezone: str = "Asia/Tokyo"
    max_rendered_chars: int = Field(48_000, ge=1_000)
    chunk_size: int = Field(100, ge=1, le=100_000)
    concurrency: int = Field(8, ge=1, le=512)
    request_timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10)
    breaker_failures: int = Field(5, ge=1, description="consecutive failures that open an endpoint's circuit")
    breaker_cooldown_s: float = Field(30.0, gt=0)
    eval_user: str = Field("platform-admin@example.com", description="identity the nightly evaluation runs as")
    eval_department: str = Field("platform", description="budget the nightly evaluation is billed to")
    eval_judge: bool = Field(True, description="score answers with the LLM-as-judge prompt quality_judge")
    regression_margin: float = Field(0.05, ge=0, le=1, description="metric drop that counts as a regression")
    latency_window_hours: float = Field(24.0, gt=0, description="window of the ledger's observed p95 latency")

    # -- observability (issue #7): metrics, the LLMOps page, alert rules -------------------------
    metrics_token: SecretStr | None = Field(
        None, description="bearer token Prometheus presents to /llmops/metrics (else an Airflow login is needed)"
    )
    mlflow_ui_url: str | None = Field(None, description="MLflow UI base URL for links; default: an http tracking URI")
    alert_latency_s: float = Field(5.0, gt=0, description="alert when a model's p95 latency exceeds this")
    alert_quality_min: float = Field(0.7, ge=0, le=1, description="alert when a prompt version scores below this")
    alert_error_rate: float = Field(0.01, ge=0, le=1, description="alert when the failed share exceeds this")
    alert_window_minutes: int = Field(60, ge=1, description="window of the latency and error-rate rules")
    alert_min_requests: int = Field(20, ge=1, description="fewer calls in the window than this: no rate alert")
    slack_conn_id: str | None = Field(None, description="Airflow Slack webhook connection for alerts, if any")

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r} (use an IANA name such as Asia/Tokyo)") from exc
        return value

    # -- derived paths --------------------------------------------------------------------------
    def path(self, p: Path | str) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else (self.home / p).resolve()

    @property
    def data_path(self) -> Path:
        return self.path(self.data_dir)

    @property
    def policy_path(self) -> Path:
        return self.path(self.policy_file)

    @property
    def prompts_path(self) -> Path:
        return self.path(self.prompts_dir)

    @property
    def outputs_path(self) -> Path:
        return self.data_path / "outputs"

    @property
    def mail_path(self) -> Path:
        return self.data_path / "mail"

    @property
    def ledger_database_url(self) -> str:
        return self.ledger_url or f"sqlite:///{self.data_path / 'ledger.db'}"

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.data_path / 'mlflow.db'}"

    @property
    def mlflow_ui(self) -> str | None:
        url = self.mlflow_ui_url or (self.mlflow_uri if self.mlflow_uri.startswith(("http://", "https://")) else None)
        return url.rstrip("/") if url else None

    @property
    def simulator_url(self) -> str:
        return f"http://{self.simulator_host}:{self.simulator_port}/v1"


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment; a bad value is one :class:`ConfigError` line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = "LLMOPS_" + "_".join(str(p) for p in err["loc"]).upper()
        raise ConfigError(
            f"environment: {key}: {err['msg']}",
            f"set {key} to a valid value or unset it to use the default",
        ) from None
