"""MLflow tracking of the nightly evaluation and the prompt-registry mirror.

One experiment per prompt (``llmops/<prompt>``); per night a parent run, and per (version, model) a
nested run with params, metrics and the per-case table, linked to the registry's prompt version. The
prompt library is mirrored into MLflow's prompt registry with the same versions (tag
``llmops_version``) and aliases. In the MLflow UI: select the runs of one night → Compare.
"""

from __future__ import annotations

import json
import os
from typing import Any

from llmops import __version__
from llmops.evaluation.runner import EvalRun, as_rows
from llmops.prompts import PromptLibrary


def _mlflow(tracking_uri: str) -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return mlflow


def _use_experiment(mlflow: Any, tracking_uri: str, name: str) -> None:
    """Select (creating if needed) an experiment. With a local SQLite store, artifacts go beside the
    database (``mlartifacts/``) rather than MLflow's default ``./mlruns`` of whatever the working
    directory is; with a tracking server, the server's artifact root applies."""
    if mlflow.get_experiment_by_name(name) is None:
        location = None
        if tracking_uri.startswith("sqlite:///"):
            from pathlib import Path

            location = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        from mlflow.exceptions import MlflowException

        try:
            mlflow.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by another process
            pass
    mlflow.set_experiment(name)


def registered_versions(client: Any, name: str) -> dict[str, Any]:
    """{llmops version: registry PromptVersion} of one prompt (empty if it is not registered yet)."""
    from mlflow.exceptions import MlflowException

    found: dict[str, Any] = {}
    token = None
    while True:
        try:
            page = client.search_prompt_versions(name, max_results=100, page_token=token)
        except MlflowException:
            return found  # not registered yet
        for pv in page:
            tag = (pv.tags or {}).get("llmops_version")
            if tag:
                found[tag] = pv
        token = getattr(page, "token", None)
        if not token:
            return found


def mirror_prompt(tracking_uri: str, library: PromptLibrary, name: str) -> dict[str, Any]:
    """Register every library version of ``name`` that the registry lacks; sync the aliases.

    Returns {library version: registry PromptVersion}."""
    mlflow = _mlflow(tracking_uri)
    client = mlflow.MlflowClient()
    existing = registered_versions(client, name)
    meta = library.meta(name)
    for version in library.versions(name):
        key = str(version.version)
        if key not in existing:
            existing[key] = mlflow.genai.register_prompt(
                name=name,
                template=version.source,
                commit_message=f"llmops {name}@{key}",
                tags={
                    "llmops_version": key,
                    "source_hash": version.source_hash,
                    "owner": meta.owner,
                    "task_type": meta.task_type,
                },
            )
    for alias, target in meta.aliases.items():
        target_key = str(library.resolve(f"{name}@{target}").version)
        mlflow.genai.set_prompt_alias(name, alias=alias, version=int(existing[target_key].version))
    return existing


def log_night(
    tracking_uri: str, library: PromptLibrary, night: str, prompt: str, runs: list[EvalRun], golden_hash: str
) -> dict[tuple[str, str], str]:
    """Log one prompt's night; returns {(version, model): mlflow run id}."""
    import pandas as pd

    mlflow = _mlflow(tracking_uri)
    registry = mirror_prompt(tracking_uri, library, prompt)
    _use_experiment(mlflow, tracking_uri, f"llmops/{prompt}")
    ids: dict[tuple[str, str], str] = {}
    with mlflow.start_run(run_name=f"nightly {night}", tags={"llmops.night": night, "llmops.kind": "nightly"}):
        for r in runs:
            pv = library.resolve(f"{prompt}@{r.version}")
            with mlflow.start_run(run_name=f"{prompt}@{r.version} · {r.model}", nested=True) as child:
                mlflow.set_tags(
                    {
                        "llmops.night": night,
                        "llmops.prompt": prompt,
                        "llmops.version": r.version,
                        "llmops.model": r.model,
                    }
                )
                mlflow.log_params(
                    {
                        "prompt": prompt,
                        "prompt_version": r.version,
                        "model": r.model,
                        "parameters": json.dumps(pv.meta.parameters, sort_keys=True),
                        "golden_set_hash": golden_hash,
                        "code_version": __version__,
                        "template_hash": pv.source_hash,
                        "pass_threshold": r.threshold,
                    }
                )
                metrics = {f"{k}/mean": v for k, v in r.metric_means.items()}
                metrics.update(
                    {
                        "overall/mean": r.overall,
                        "pass_rate": r.pass_rate,
                        "cost_usd": r.cost_nanousd / 1e9,
                        "tokens": float(r.tokens),
                        "latency_p95_ms": r.p95_latency_ms,
                        "cases": float(len(r.cases)),
                        "new_calls": float(r.new_calls),
                    }
                )
                mlflow.log_metrics(metrics)
                mlflow.log_table(pd.DataFrame(as_rows(r)), artifact_file="cases.json")
                reg = registry.get(r.version)
                if reg is not None:
                    mlflow.MlflowClient().link_prompt_version_to_run(child.info.run_id, reg)
                ids[(r.version, r.model)] = child.info.run_id
    return ids
