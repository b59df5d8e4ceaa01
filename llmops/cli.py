"""``llmops`` — the command line. The same functions the DAGs call; errors are one line and an exit code."""

from __future__ import annotations

import json
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer

from llmops.errors import LlmopsError, raised_at

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help="Batch LLMOps on Apache Airflow."
)
prompts_app = typer.Typer(no_args_is_help=True, help="The prompt library.")
batch_app = typer.Typer(no_args_is_help=True, help="Batch jobs.")
sim_app = typer.Typer(no_args_is_help=True, help="The built-in simulator provider.")
mail_app = typer.Typer(no_args_is_help=True, help="The local SMTP sink.")
db_app = typer.Typer(no_args_is_help=True, help="The ledger database.")
budget_app = typer.Typer(no_args_is_help=True, help="Budgets.")
report_app = typer.Typer(no_args_is_help=True, help="Cost reports.")
eval_app = typer.Typer(no_args_is_help=True, help="Quality evaluation on golden sets.")
guard_app = typer.Typer(no_args_is_help=True, help="The security gateway: pre-screening and quarantine.")
app.add_typer(prompts_app, name="prompts")
app.add_typer(batch_app, name="batch")
app.add_typer(sim_app, name="sim")
app.add_typer(mail_app, name="mail")
app.add_typer(db_app, name="db")
app.add_typer(budget_app, name="budget")
app.add_typer(report_app, name="report")
app.add_typer(eval_app, name="eval")
app.add_typer(guard_app, name="guard")
stack_app = typer.Typer(no_args_is_help=True, help="The production topology as local processes (Postgres, Celery).")
app.add_typer(stack_app, name="stack")


def _settings(**overrides: Any) -> Any:
    from llmops.settings import load_settings

    return load_settings(**overrides)


def _library() -> Any:
    from llmops.prompts import PromptLibrary

    s = _settings()
    return PromptLibrary(s.prompts_path, s.max_rendered_chars)


def _parse_vars(pairs: list[str], vars_file: Path | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if vars_file is not None:
        from llmops.policy import load_yaml

        loaded = load_yaml(vars_file)
        if not isinstance(loaded, dict):
            raise LlmopsError(f"{vars_file}: must hold a mapping of variable names to values")
        values.update(loaded)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise LlmopsError(f"--var {pair!r} is not NAME=VALUE", "write --var name=value")
        values[name] = value
    return values


# -- prompts --------------------------------------------------------------------------------------
@prompts_app.command("list")
def prompts_list() -> None:
    """List prompts, versions and aliases."""
    lib = _library()
    for name in lib.names():
        meta = lib.meta(name)
        versions = ", ".join(str(v.version) for v in lib.versions(name))
        aliases = ", ".join(f"{a}→{v}" for a, v in sorted(meta.aliases.items()))
        typer.echo(f"{name:28} {meta.task_type:15} versions: {versions:24} aliases: {aliases}")


@prompts_app.command("show")
def prompts_show(ref: str) -> None:
    """Show a prompt version's metadata and template."""
    lib = _library()
    pv = lib.resolve(ref)
    typer.echo(f"# {pv.ref}  ({pv.path})")
    typer.echo(pv.meta.model_dump_json(indent=2, by_alias=True))
    typer.echo("--- template ---")
    typer.echo(pv.source)


@prompts_app.command("render")
def prompts_render(
    ref: str,
    var: Annotated[list[str] | None, typer.Option("--var", help="NAME=VALUE; repeatable")] = None,
    vars_file: Annotated[Path | None, typer.Option(help="YAML/JSON file of variables")] = None,
) -> None:
    """Render a prompt version with variables (sandboxed, strict)."""
    rendered = _library().render(ref, _parse_vars(var or [], vars_file))
    for m in rendered.messages:
        typer.echo(f"[{m['role']}]\n{m['content']}\n")


@prompts_app.command("validate")
def prompts_validate() -> None:
    """Load and check every prompt, template and golden set."""
    lib = _library()
    n = 0
    for name in lib.names():
        n += len(lib.versions(name))
        golden = lib.root / name / "eval" / "golden.jsonl"
        cases = _check_golden(golden, lib, name)
        typer.echo(f"ok  {name}: {len(lib.versions(name))} version(s), {cases} golden case(s)")
    typer.echo(f"{len(lib.names())} prompts, {n} versions valid")


def _check_golden(path: Path, lib: Any, name: str) -> int:
    """Validate the golden set (the evaluation's own loader) and render every case with every version."""
    from llmops.evaluation.golden import load_golden

    cases = load_golden(path)
    for pv in lib.versions(name):
        for case in cases:
            try:
                lib.render(pv, case.inputs)
            except LlmopsError as exc:
                raise LlmopsError(
                    f"{path}: case {case.id!r} does not render with {pv.ref}: {exc.problem}",
                    exc.fix or "fix the case's inputs",
                ) from None
    return len(cases)


# -- batch ----------------------------------------------------------------------------------------
@batch_app.command("run")
def batch_run(
    prompt: Annotated[str, typer.Option(help="NAME[@REF]")],
    input: Annotated[str, typer.Option("--input", help="CSV/Parquet path, sample:<file> or <url>#<table>")],
    department: Annotated[str, typer.Option()],
    user: Annotated[str, typer.Option()],
    output: Annotated[Path | None, typer.Option(help="write results here (.parquet or .csv)")] = None,
    priority: Annotated[str | None, typer.Option(help="cost | quality | speed | balanced")] = None,
    data_class: Annotated[str, typer.Option()] = "internal",
    key_column: Annotated[str, typer.Option()] = "id",
    run_id: Annotated[str | None, typer.Option(help="reuse to resume a run; default: a new id")] = None,
    cost_cap_usd: Annotated[float | None, typer.Option()] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="estimate only")] = False,
) -> None:
    """Run a batch in this process: the CLI twin of the llm_batch DAG."""
    import time

    from llmops.batch import BatchSpec, run_batch
    from llmops.gateway import Gateway

    _quiet_logs()
    gw = Gateway(_settings())
    if not input.startswith("sample:") and "://" not in input:
        input = str(Path(input).expanduser().resolve())  # CLI paths are relative to the current directory
    rid = run_id or f"cli__{time.strftime('%Y%m%dT%H%M%S')}_{os.getpid()}"
    spec = BatchSpec(
        prompt=prompt,
        input=input,
        department=department,
        user=user,
        run_id=rid,
        priority=priority,
        data_class=data_class,
        key_column=key_column,
        cost_cap_usd=cost_cap_usd,
        dry_run=dry_run,
    )
    summary = run_batch(gw, spec)
    if dry_run:
        est = summary["plan"]["estimate"]
        plan = summary["plan"]
        typer.echo(
            f"dry run: {est['records']} records, {est['prompt_tokens']} prompt tokens + "
            f"~{est['expected_completion_tokens']} completion tokens (basis: {est['basis']})"
        )
        typer.echo(
            f"estimated cost ${est['expected_cost_usd']} (upper bound ${est['max_cost_usd']}), "
            f"models {est['models']}, priority {plan['priority'] or 'default'}"
            + (" (downgraded to fit the budget)" if plan.get("downgraded") else "")
        )
        typer.echo(
            f"remaining budget ${plan['remaining_budget_usd']} for {plan['department']} in "
            f"{plan['budget_month']}; nothing was called or billed"
        )
        return
    if output is not None:
        _export(Path(summary["output"]), output)
        summary["exported"] = str(output)
    _print_summary(summary)


@batch_app.command("stream")
def batch_stream(
    prompt: Annotated[str, typer.Option(help="NAME[@REF]")],
    input: Annotated[Path, typer.Option("--input", help="a .csv or .jsonl file, read incrementally")],
    output: Annotated[Path, typer.Option(help="results as JSONL, written as they settle")],
    department: Annotated[str, typer.Option()],
    user: Annotated[str, typer.Option()],
    run_id: Annotated[str, typer.Option(help="reuse to resume a run: settled records are replayed")],
    key_column: Annotated[str, typer.Option()] = "id",
    model: Annotated[str | None, typer.Option(help="pin a catalog model instead of routing")] = None,
    concurrency: Annotated[int | None, typer.Option(help="default: LLMOPS_CONCURRENCY")] = None,
) -> None:
    """Stream a large file through the batch engine (flat memory; provider rate limits honoured)."""
    from llmops.engine import Engine
    from llmops.gateway import Gateway
    from llmops.stream import stream_batch

    _quiet_logs()
    gw = Gateway(_settings())
    summary = stream_batch(
        gw,
        input_path=input.expanduser().resolve(),
        output_path=output.expanduser().resolve(),
        prompt=prompt,
        user=user,
        department=department,
        run_id=run_id,
        key_column=key_column,
        model=model,
        engine=Engine(gw, concurrency=concurrency),
    )
    typer.echo(json.dumps(summary, indent=2, default=str))


def _export(results: Path, output: Path) -> None:
    import pandas as pd

    df = pd.read_parquet(results)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".csv":
        df.to_csv(output, index=False)
    else:
        df.to_parquet(output, index=False)


def _print_summary(summary: dict[str, Any]) -> None:
    c = summary["counts"]
    typer.echo(f"run {summary['run_id']}  prompt {summary['prompt']}")
    typer.echo(
        f"rows processed: {summary['records']}  ok={c['ok']} blocked={c['blocked']} denied={c['denied']} "
        f"failed={c['failed']} deferred={c['deferred']}"
    )
    for dept, cost in sorted(summary["cost_by_department"].items()):
        typer.echo(f"cost {dept}: ${cost}")
    typer.echo(
        f"outputs: {summary['output']}" + (f"  (exported to {summary['exported']})" if "exported" in summary else "")
    )
    typer.echo(f"ledger: {summary['ledger']}  dead letters: {summary['dead_letters']}")


def _quiet_logs() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("LiteLLM", "litellm", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


# -- services -------------------------------------------------------------------------------------
@sim_app.command("serve")
def sim_serve(
    host: str = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="default: LLMOPS_SIMULATOR_PORT")] = None,
    rpm: Annotated[int | None, typer.Option(help="requests/minute per model")] = None,
    tpm: Annotated[int | None, typer.Option(help="tokens/minute per model")] = None,
    latency_scale: float = 1.0,
    error_rate: float = 0.0,
    timeout_rate: float = 0.0,
    hang_seconds: Annotated[float, typer.Option(help="how long an injected timeout hangs")] = 120.0,
    bucket_seconds: Annotated[float, typer.Option(help="burst capacity of the rate-limit buckets, in seconds")] = 60.0,
    seed: int = 7,
) -> None:
    """Serve the OpenAI-compatible simulator on loopback."""
    from llmops.simulator import SimConfig, serve

    s = _settings()
    cfg = SimConfig(
        host=host,
        port=port or s.simulator_port,
        rpm=rpm,
        tpm=tpm,
        latency_scale=latency_scale,
        error_rate=error_rate,
        timeout_rate=timeout_rate,
        hang_seconds=hang_seconds,
        bucket_seconds=bucket_seconds,
        seed=seed,
        api_key=s.simulator_api_key.get_secret_value(),
    )
    typer.echo(f"simulator on http://{cfg.host}:{cfg.port}/v1 (models: sim-small, sim-medium, sim-large)")
    serve(cfg)


@mail_app.command("serve")
def mail_serve(
    port: Annotated[int | None, typer.Option()] = None, folder: Annotated[Path | None, typer.Option("--dir")] = None
) -> None:
    """Run the SMTP sink; every mail becomes an .eml file."""
    import time

    from llmops import mailsink

    s = _settings()
    target = folder or s.mail_path
    ctl = mailsink.start(target, s.smtp_host, port or s.smtp_port)
    typer.echo(f"SMTP sink on {s.smtp_host}:{port or s.smtp_port}, storing mail in {target}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        ctl.stop()


@db_app.command("migrate")
def db_migrate() -> None:
    """Create or upgrade the ledger schema (Alembic)."""
    from llmops.ledger import Ledger

    led = Ledger(_settings().ledger_database_url)
    typer.echo(f"ledger at head: {led.safe_url}")


@app.command("check")
def check_config() -> None:
    """Validate settings, llmops.yaml and the prompt library."""
    from llmops.policy import load_policy

    s = _settings()
    p = load_policy(s.policy_path)
    lib = _library()
    typer.echo(f"ok  {s.policy_path}: {len(p.departments)} departments, {len(p.people)} people, {len(p.models)} models")
    typer.echo(f"ok  {s.prompts_path}: {len(lib.names())} prompts")


@budget_app.command("show")
def budget_show(
    department: Annotated[str | None, typer.Option()] = None,
    month: Annotated[str | None, typer.Option(help="YYYY-MM")] = None,
) -> None:
    """Budget, spent, reserved and remaining per department."""
    from llmops.budget import Budget
    from llmops.errors import RequestError
    from llmops.ledger import Ledger
    from llmops.policy import load_policy

    s = _settings()
    policy = load_policy(s.policy_path)
    if department and department not in policy.departments:
        raise RequestError(f"unknown department {department!r}", f"use one of: {', '.join(policy.departments)}")
    if month is not None:
        from llmops.reports.monthly import check_month

        check_month(month)
    b = Budget(Ledger(s.ledger_database_url), policy, s.timezone)
    typer.echo(
        f"{'department':12} {'month':7}  {'budget':>10}  {'spent':>12}  {'reserved':>12}  {'remaining':>12}  "
        f"{'used':>6}  {'spent JPY':>10}"
    )
    for d in [department] if department else sorted(policy.departments):
        u = b.usage(d, month)
        jpy = (u["spent_usd"] * policy.usd_jpy).quantize(Decimal("1"))  # type: ignore[operator]
        typer.echo(
            f"{d:12} {u['month']:7}  ${u['budget_usd']:>9.2f}  ${u['spent_usd']:>11.6f}  "
            f"${u['reserved_usd']:>11.6f}  ${u['remaining_usd']:>11.6f}  {u['used_ratio']:>6.1%}  ¥{jpy:>9}"
        )


@report_app.command("monthly")
def report_monthly(
    month: Annotated[str, typer.Option(help="YYYY-MM")],
    send: Annotated[bool, typer.Option("--send", help="mail the reports (SMTP connection smtp_default)")] = False,
    out: Annotated[Path | None, typer.Option(help="folder for the archive; default data/reports/<month>")] = None,
) -> None:
    """Build (and optionally send) the month's per-department cost reports."""
    from llmops.ledger import Ledger
    from llmops.policy import load_policy
    from llmops.reports import build_monthly_report, deliver_monthly_report
    from llmops.reports.monthly import check_month

    _quiet_logs()
    s = _settings()
    check_month(month)
    policy = load_policy(s.policy_path)
    report = build_monthly_report(s, policy, Ledger(s.ledger_database_url), month, out)
    if report.valid:
        for d in report.departments:
            typer.echo(
                f"{d['department']:12} requests {d['requests']:6}  cost ${d['cost_usd']}  "
                f"used {d['pct_used'] or 0:.1f} %"
            )
        typer.echo(f"total ${report.total_cost_usd}; archived in {report.folder}")
    else:
        typer.echo(f"validation failed: {report.validation_summary} (details: {report.validation_file})", err=True)
    if send:
        from llmops.airflow_adapter import send_email
        from llmops.platform import smtp_connection_env

        os.environ.setdefault("AIRFLOW_CONN_SMTP_DEFAULT", smtp_connection_env(s))
        outcome = deliver_monthly_report(report, policy, send_email)
        typer.echo(
            f"mailed: {', '.join(outcome['sent']) or 'nothing'}"
            + (f"; alert to {', '.join(outcome['alert'])}" if outcome["alert"] else "")
        )
    if not report.valid:
        raise LlmopsError(
            f"cost report {month} withheld: data validation failed",
            f"fix the ledger rows listed in {report.validation_file}, then rerun",
        )


@guard_app.command("scan")
def guard_scan(
    file: Annotated[Path | None, typer.Argument(help="JSONL file; default: standard input")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="JSONL file; default: standard output")] = None,
) -> None:
    """Pre-screen JSONL records {"text", "user", "department", "data_class"}: decision, findings, redacted text."""
    from collections import Counter

    from llmops.policy import load_policy
    from llmops.scan import scan_lines

    policy = load_policy(_settings().policy_path)
    if file is not None and not file.exists():
        raise LlmopsError(f"{file}: file not found", "pass a JSONL file or pipe records on standard input")
    source = file.open(encoding="utf-8") if file is not None else sys.stdin
    sink = output.open("w", encoding="utf-8") if output is not None else sys.stdout
    decisions: Counter[str] = Counter()
    try:
        for result in scan_lines(source, policy):
            decisions[result["decision"]] += 1
            sink.write(json.dumps(result, ensure_ascii=False) + "\n")
    finally:
        if file is not None:
            source.close()
        if output is not None:
            sink.close()
    typer.echo("scanned: " + ", ".join(f"{k}={v}" for k, v in sorted(decisions.items())), err=True)


@guard_app.command("train-injection")
def guard_train_injection(
    files: Annotated[list[Path], typer.Argument(help="labelled files: '+ attack' / '- legitimate' lines")],
    output: Annotated[Path, typer.Option("--output", "-o", help="model JSON to write")] = Path(
        "llmops/injection_model.json"
    ),
    false_alarms: Annotated[float, typer.Option(help="cross-validated false-alarm rate the threshold allows")] = 0.02,
    background: Annotated[
        list[Path] | None,
        typer.Option(help="ordinary legitimate text ('- ' lines): trains the weights, not the false-alarm budget"),
    ] = None,
) -> None:
    """Train the learned injection layer (needs scikit-learn); the threshold is set by cross-validation."""
    from llmops.injection_model import train

    background = background or []
    missing = [str(f) for f in [*files, *background] if not f.is_file()]
    if missing:
        raise LlmopsError(f"not a file: {', '.join(missing)}", "pass labelled .txt files ('+ ' / '- ' lines)")
    try:
        model = train(files, background=background, false_alarms=false_alarms)
    except ValueError as exc:
        raise LlmopsError(str(exc), "add labelled lines of both kinds") from exc
    output.write_text(json.dumps(model.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    m = model.meta
    typer.echo(
        f"trained on {m['lines']} lines ({m['attacks']} attacks): threshold {model.threshold:.4f}, cross-validated "
        f"detection {m['cv_detection']:.3f}, false alarms {m['cv_false_alarms']:.3f} -> {output}",
        err=True,
    )


@guard_app.command("quarantine")
def guard_quarantine(run: Annotated[str | None, typer.Option(help="only this run")] = None) -> None:
    """Blocked and denied records awaiting review: reason, rule, finding types and counts (never raw PII)."""
    from sqlalchemy import select

    from llmops.ledger import Ledger, LlmCall, Quarantine
    from llmops.types import GUARD_ERROR, Status

    led = Ledger(_settings().ledger_database_url)
    stmt = select(Quarantine).order_by(Quarantine.id)
    if run:
        stmt = stmt.where(Quarantine.run_id == run)
    with led.transaction() as s:
        rows = list(s.scalars(stmt))
        # a guard error is screened again by a rerun of its run: show what became of the record
        retried = [q.request_key for q in rows if q.rule == GUARD_ERROR]
        now = dict(s.execute(select(LlmCall.request_key, LlmCall.status).where(LlmCall.request_key.in_(retried))).all())
    for q in rows:
        state = f"released by {q.released_by}" if q.released_at else "awaiting review"
        if q.rule == GUARD_ERROR:
            state = (
                "awaiting a rerun of its run"
                if now.get(q.request_key, Status.BLOCKED) == Status.BLOCKED
                else f"cleared by a rerun: {now[q.request_key]}"
            )
        typer.echo(
            f"{q.created_at:%Y-%m-%d %H:%M} {q.request_key} {q.status:8} {q.run_id} {q.record_key} "
            f"{q.prompt_name}@{q.prompt_version} {q.department}/{q.user} rule={q.rule} findings={q.findings} "
            f"[{state}]"
        )
    typer.echo(f"{len(rows)} quarantined record(s)", err=True)


@guard_app.command("release")
def guard_release(
    request_key: Annotated[str, typer.Argument(help="the request key shown by `llmops guard quarantine`")],
    by: Annotated[str, typer.Option(help="who releases it: the department head or a platform admin")],
    note: Annotated[str, typer.Option(help="why the record is safe to send (kept for the audit)")],
) -> None:
    """Release a guard-blocked record after review; the next run of its batch (same run id) processes it."""
    from llmops.ledger import Ledger
    from llmops.policy import load_policy
    from llmops.quarantine import release

    settings = _settings()
    q = release(Ledger(settings.ledger_database_url), load_policy(settings.policy_path), request_key, by=by, note=note)
    typer.echo(
        f"released {q.request_key} ({q.rule}) of run {q.run_id}; rerun with: llmops batch run ... --run-id {q.run_id}"
    )


@eval_app.command("run")
def eval_run(
    prompt: Annotated[str, typer.Option(help="prompt name")],
    version: Annotated[str | None, typer.Option(help="one version (default: production, else latest)")] = None,
    all_versions: Annotated[bool, typer.Option("--all-versions", help="every version")] = False,
    model: Annotated[list[str] | None, typer.Option(help="candidate model(s); default: the prompt's list")] = None,
    track: Annotated[bool, typer.Option(help="log the runs to MLflow")] = True,
    night: Annotated[str | None, typer.Option(help="YYYY-MM-DD; default: today in LLMOPS_TIMEZONE")] = None,
) -> None:
    """Evaluate prompt versions on their golden set through the request path (cached through the ledger)."""
    from llmops.evaluation import evaluate_prompt, tonight
    from llmops.gateway import Gateway

    _quiet_logs()
    s = _settings()
    gw = Gateway(s)
    meta = gw.library.meta(prompt)
    if all_versions:
        versions = None
    else:
        ref = f"{prompt}@{version}" if version else prompt
        versions = [str(gw.library.resolve(ref).version)]
    for m in model or []:
        gw.policy.model(m)
    result = evaluate_prompt(
        gw,
        prompt,
        night=night or tonight(s.timezone),
        versions=versions,
        models=model or None,
        track=track,
        margin=s.regression_margin,
    )
    typer.echo(f"{prompt} ({meta.task_type}, pass threshold {meta.quality_threshold}) — night {result.night}")
    typer.echo(f"{'version':10} {'model':12} {'overall':>8} {'pass':>7} {'new calls':>10} {'cost USD':>12}")
    for r in result.runs:
        typer.echo(
            f"{r.version:10} {r.model:12} {r.overall:8.3f} {r.pass_rate:7.1%} {r.new_calls:10d} "
            f"{r.cost_nanousd / 1e9:12.6f}"
        )
    for reg in result.regressions:
        typer.echo(f"REGRESSION {reg.line()}")
    if track:
        typer.echo(f"MLflow: experiment llmops/{prompt} at {s.mlflow_uri}")


@eval_app.command("compare")
def eval_compare(
    prompt: str,
    a: Annotated[str, typer.Argument(help="version A")],
    b: Annotated[str, typer.Argument(help="version B")],
) -> None:
    """Metric deltas between two versions from the latest night that evaluated both."""
    from sqlalchemy import select

    from llmops.errors import PromptError
    from llmops.ledger import EvalResult, Ledger

    s = _settings()
    lib = _library()
    va, vb = str(lib.resolve(f"{prompt}@{a}").version), str(lib.resolve(f"{prompt}@{b}").version)
    led = Ledger(s.ledger_database_url)
    with led.transaction() as session:
        rows = list(
            session.scalars(
                select(EvalResult)
                .where(EvalResult.prompt_name == prompt, EvalResult.prompt_version.in_([va, vb]))
                .order_by(EvalResult.night)
            )
        )
    nights = {r.night for r in rows if r.prompt_version == va} & {r.night for r in rows if r.prompt_version == vb}
    if not nights:
        raise PromptError(
            f"no night evaluated both {prompt}@{va} and {prompt}@{vb}",
            f"run: llmops eval run --prompt {prompt} --all-versions",
        )
    night = max(nights)
    latest = {(r.prompt_version, r.model): r for r in rows if r.night == night}
    typer.echo(f"{prompt}: {va} → {vb}, night {night}")
    for model in sorted({m for _, m in latest}):
        ra, rb = latest.get((va, model)), latest.get((vb, model))
        if ra is None or rb is None:
            continue
        ma, mb = (
            {**json.loads(ra.metrics), "overall": ra.overall, "pass_rate": ra.pass_rate},
            {**json.loads(rb.metrics), "overall": rb.overall, "pass_rate": rb.pass_rate},
        )
        typer.echo(f"\n  {model}")
        typer.echo(f"  {'metric':14} {va:>10} {vb:>10} {'delta':>9}")
        for name in sorted(set(ma) | set(mb)):
            x, y = ma.get(name), mb.get(name)
            if x is None or y is None:
                continue
            typer.echo(f"  {name:14} {x:10.3f} {y:10.3f} {y - x:+9.3f}")


@app.command("demo")
def demo() -> None:
    """Headless one-shot: run llm_batch with dag.test() over the sample data and print the summary."""
    from llmops.platform import run_demo

    sys.exit(run_demo(_settings()))


@app.command("up")
def up(
    trigger: Annotated[bool, typer.Option(help="trigger llm_batch once when the platform is up")] = True,
    airflow_port: int = 8080,
    mlflow_port: int = 5000,
) -> None:
    """Bring the platform up on the embedded default and keep it running (Ctrl-C stops everything)."""
    from llmops.platform import run_up

    sys.exit(run_up(_settings(), airflow_port=airflow_port, mlflow_port=mlflow_port, trigger=trigger))


@stack_app.command("up")
def stack_up(
    name: Annotated[str, typer.Option(help="prefix of the Postgres databases and the Celery queue")] = "llmops_stack",
    postgres_url: Annotated[str, typer.Option(help="server URL with CREATEDB rights")] = "",
    redis_url: str = "redis://127.0.0.1:6379",
    redis_db: int = 0,
    airflow_port: int = 8080,
    mlflow_port: int = 5000,
    workers: Annotated[int, typer.Option(min=1, max=16)] = 1,
) -> None:
    """Start Postgres-backed Airflow (CeleryExecutor + worker), MLflow, SMTP sink and simulator; Ctrl-C stops."""
    import signal
    import time

    from llmops.stack import DEFAULT_POSTGRES, Stack, StackConfig, env_summary

    s = _settings()
    cfg = StackConfig(
        name=name,
        data_dir=s.data_path / "stack" / name,
        postgres_url=postgres_url or DEFAULT_POSTGRES,
        redis_url=redis_url,
        redis_db=redis_db,
        api_port=airflow_port,
        mlflow_port=mlflow_port,
        simulator_port=s.simulator_port,
        smtp_port=s.smtp_port,
        workers=workers,
    )

    def _stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    stack = Stack(s, cfg)
    typer.echo(f"starting the stack {name} (logs in {stack.sup.log_dir}) ...")
    try:
        stack.start()
        typer.echo(env_summary(cfg))
        typer.echo(f"login: admin / {stack.password}")
        typer.echo("The stack is up. Ctrl-C stops it; `llmops stack down --name NAME` drops its databases.")
        while True:
            stack.sup.check()
            time.sleep(2)
    except KeyboardInterrupt:
        typer.echo("stopping ...")
    except RuntimeError as exc:
        typer.echo(f"error: {exc} — fix: read the log it names", err=True)
        stack.stop()
        sys.exit(1)
    stack.stop()


@stack_app.command("down")
def stack_down(
    name: Annotated[str, typer.Option()] = "llmops_stack",
    postgres_url: Annotated[str, typer.Option()] = "",
) -> None:
    """Drop a stack's databases (stop its processes first with Ctrl-C on `llmops stack up`)."""
    from llmops.stack import DEFAULT_POSTGRES, StackConfig, drop_databases

    s = _settings()
    cfg = StackConfig(name=name, data_dir=s.data_path / "stack" / name, postgres_url=postgres_url or DEFAULT_POSTGRES)
    dropped = drop_databases(cfg)
    typer.echo(f"dropped: {', '.join(dropped) or 'nothing (no such databases)'}")


def main() -> None:
    try:
        app()
    except LlmopsError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        # A bug, not bad input. Its message may quote a record (PII, secrets): only its type and where it
        # was raised are printed, unless DEBUG_LLMOPS=1 asks for the full traceback.
        if os.environ.get("DEBUG_LLMOPS") == "1":
            raise
        typer.echo(
            f"error: unexpected {type(exc).__name__} raised at {raised_at(exc)} (the message is withheld: it may quote "
            "a record) — fix: rerun with DEBUG_LLMOPS=1 for the traceback and report it",
            err=True,
        )
        sys.exit(70)


if __name__ == "__main__":
    main()
