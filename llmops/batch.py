"""Batch jobs: plan (validate, estimate, chunk) → run chunks → reconcile.

The plan is a plain dict (it travels through Airflow XCom). Chunks are independent and idempotent:
a chunk that dies and is retried replays what the ledger already holds and calls only what is
missing. Reconciliation checks ``input = ok + blocked + denied + failed + deferred`` against the
ledger, writes the dead-letter table and merges the output parts into one Parquet file.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from llmops.engine import Engine
from llmops.errors import BudgetExceededError, InputError, ReconciliationError, RequestError
from llmops.gateway import Gateway
from llmops.pricing import cost_nano, to_nano, usd
from llmops.prompts import PromptVersion
from llmops.tokens import count_messages
from llmops.types import Request, Result, Status

log = logging.getLogger("llmops.batch")
BATCH_STATES = ("ok", "blocked", "denied", "failed", "deferred")
_STATE_OF = {
    Status.OK: "ok",
    Status.BLOCKED: "blocked",
    Status.DENIED: "denied",
    Status.FAILED: "failed",
    Status.BUDGET_EXCEEDED: "deferred",
    Status.DEFERRED: "deferred",
    Status.THROTTLED: "deferred",
    Status.PENDING: "failed",
}


@dataclass(frozen=True)
class BatchSpec:
    prompt: str
    input: str
    department: str
    user: str
    run_id: str
    priority: str | None = None
    data_class: str = "internal"
    key_column: str = "id"
    cost_cap_usd: float | None = None
    chunk_size: int | None = None
    dry_run: bool = False


# -- input --------------------------------------------------------------------------------------
def resolve_input(spec: str, home: Path) -> str:
    """``sample:<file>`` (bundled), a CSV/Parquet path, or ``<sqlalchemy-url>#<table>``."""
    if spec.startswith("sample:"):
        name = spec.split(":", 1)[1]
        path = Path(str(resources.files("llmops") / "samples" / name))
        if not path.exists():
            raise InputError(f"unknown sample {name!r}", "use sample:support_tickets.csv or a file path")
        return str(path)
    if "://" in spec:
        return spec
    path = Path(spec).expanduser()
    return str(path if path.is_absolute() else (home / path).resolve())


def read_input(source: str) -> pd.DataFrame:
    if "://" in source:
        url, _, table = source.partition("#")
        if not table:
            raise InputError(f"SQL input {url!r} names no table", "append #<table> to the URL")
        from sqlalchemy import create_engine

        engine = create_engine(url)
        try:
            return pd.read_sql_table(table, engine).astype(object).where(lambda d: d.notna(), None)
        except Exception as exc:
            raise InputError(
                f"cannot read table {table!r}: {type(exc).__name__}: {exc}".splitlines()[0],
                "check the URL and the table name",
            ) from None
        finally:
            engine.dispose()
    path = Path(source)
    if not path.exists():
        raise InputError(f"input file {path} does not exist", "check the path (relative paths start at LLMOPS_HOME)")
    stat = path.stat()
    # plan, every chunk and reconcile read the same file: parse it once per process while it is unchanged
    return _read_file(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _read_file(source: str, _mtime_ns: int, _size: int) -> pd.DataFrame:
    path = Path(source)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False, on_bad_lines="error", encoding="utf-8")
            return df.astype(object).where(df != "", None)
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
            return df.astype(object).where(df.notna(), None)
    except pd.errors.ParserError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{path}: malformed CSV: {first}", "fix that row (quote fields that contain commas)") from None
    except (UnicodeDecodeError, ValueError, OSError) as exc:
        raise InputError(
            f"{path}: unreadable input: {type(exc).__name__}: {str(exc)[:120]}", "save it as UTF-8 CSV or Parquet"
        ) from None
    raise InputError(f"{path}: unsupported input type {suffix or '(none)'}", "use .csv, .parquet or <url>#<table>")


def _coerce(value: Any, vtype: str) -> Any:
    if value is None or not isinstance(value, str):
        return value
    if vtype == "integer":
        return int(value)
    if vtype == "number":
        return float(value)
    if vtype == "boolean":
        return value.strip().lower() in ("1", "true", "yes", "y")
    if vtype in ("list", "object"):
        return json.loads(value)
    return value


def _keys(df: pd.DataFrame, key_column: str) -> list[str]:
    column = df[key_column] if key_column in df.columns else range(len(df))
    keys = [str(k) for k in column]
    dupes = [k for k, n in Counter(keys).items() if n > 1]
    if dupes:
        raise InputError(
            f"duplicate record key(s) in column {key_column!r}: {', '.join(dupes[:5])}", "make the key column unique"
        )
    return keys


# -- plan -----------------------------------------------------------------------------------------
def plan_batch(gw: Gateway, spec: BatchSpec) -> dict[str, Any]:
    """Validate everything that can be validated before billing anything; estimate; chunk."""
    policy = gw.policy
    pv = gw.library.resolve(spec.prompt)
    if spec.department not in policy.departments:
        raise RequestError(
            f"unknown department {spec.department!r}", f"use one of: {', '.join(sorted(policy.departments))}"
        )
    person = policy.people.get(spec.user)
    if person is None:
        raise RequestError(f"unknown user {spec.user!r}", "add the person to llmops.yaml under people:")
    if person.department != spec.department:
        raise RequestError(
            f"user {spec.user} belongs to {person.department}, not {spec.department}",
            f"use --department {person.department}",
        )
    if spec.priority is not None and spec.priority not in ("cost", "quality", "speed", "balanced"):
        raise RequestError(f"unknown priority {spec.priority!r}", "use cost, quality, speed or balanced")
    source = resolve_input(spec.input, gw.settings.home)
    df = read_input(source)
    if df.empty:
        raise InputError(f"{source}: no records", "supply at least one row")
    missing = [n for n, v in pv.meta.variables.items() if v.required and v.default is None and n not in df.columns]
    if missing:
        raise InputError(
            f"{source}: no column {', '.join(repr(m) for m in missing)} required by {pv.ref}",
            f"add the column(s) or map them; the prompt declares: {', '.join(pv.meta.variables)}",
        )
    keys = _keys(df, spec.key_column)
    month = gw.budget.month()
    spent, reserved = gw.ledger.month_usage(spec.department, month)
    remaining = gw.budget.limit_nano(spec.department) - spent - reserved
    priority = spec.priority
    estimate = _estimate(gw, spec, pv, df, priority)
    downgraded = False
    if (
        to_nano(estimate["expected_cost_usd"]) > remaining
        and policy.routing.budget_shortfall == "downgrade"
        and priority != "cost"
    ):
        cheaper = _estimate(gw, spec, pv, df, "cost")
        if to_nano(cheaper["expected_cost_usd"]) <= remaining:
            estimate, priority, downgraded = cheaper, "cost", True
    size = spec.chunk_size or gw.settings.chunk_size
    chunks = [{"index": i, "start": s, "stop": min(s + size, len(df))} for i, s in enumerate(range(0, len(df), size))]
    if len(chunks) > 1024:
        raise InputError(
            f"{len(chunks)} chunks exceed Airflow's max_map_length of 1024",
            "raise the chunk size (LLMOPS_CHUNK_SIZE or the chunk_size param)",
        )
    plan = {
        "run_id": spec.run_id,
        "prompt": pv.ref,
        "prompt_requested": spec.prompt,
        "input": source,
        "department": spec.department,
        "user": spec.user,
        "priority": priority,
        "downgraded": downgraded,
        "data_class": spec.data_class,
        "key_column": spec.key_column,
        "total_rows": len(df),
        "keys_digest": _digest_keys(keys),
        "chunks": chunks,
        "estimate": estimate,
        "remaining_budget_usd": str(usd(remaining)),
        "budget_month": month,
        "cost_cap_usd": spec.cost_cap_usd,
        "output_dir": str(gw.settings.outputs_path / _safe(spec.run_id)),
        "dry_run": spec.dry_run,
    }
    est = to_nano(estimate["expected_cost_usd"])
    log.info(
        "batch %s estimate: %s (remaining budget $%s)%s",
        spec.run_id,
        estimate,
        usd(remaining),
        " — downgraded to priority=cost to fit the budget" if downgraded else "",
    )
    if spec.cost_cap_usd is not None and est > to_nano(spec.cost_cap_usd) and not spec.dry_run:
        raise BudgetExceededError(
            f"estimated cost ${estimate['expected_cost_usd']} exceeds the run's cost cap ${spec.cost_cap_usd}",
            "raise the cost cap, shrink the input, or use priority=cost",
        )
    if est > remaining and not spec.dry_run:
        raise BudgetExceededError(
            f"estimated cost ${estimate['expected_cost_usd']} exceeds {spec.department}'s remaining "
            f"budget ${usd(remaining):.4f} for {month}",
            "raise the department budget in llmops.yaml, shrink the input, use priority=cost, "
            "or set routing.budget_shortfall: downgrade",
        )
    if to_nano(estimate["max_cost_usd"]) > remaining and not spec.dry_run:
        log.warning(
            "batch %s: the upper bound $%s exceeds the remaining budget; late records may be deferred",
            spec.run_id,
            estimate["max_cost_usd"],
        )
    if not spec.dry_run:
        gw.ledger.save_batch_run(
            spec.run_id,
            prompt_ref=spec.prompt,
            prompt_version=pv.ref,
            department=spec.department,
            user=spec.user,
            input=source,
            total_rows=len(df),
            status="running",
            counts={},
        )
    return plan


def _estimate(
    gw: Gateway, spec: BatchSpec, pv: PromptVersion, df: pd.DataFrame, priority: str | None
) -> dict[str, Any]:
    """Estimate tokens and cost per record: the routed model, exact prompt tokens, and completion tokens
    from the ledger's history of this prompt version on that model (``max_tokens`` when there is none).
    ``max_cost_usd`` is the upper bound the reservations will hold."""
    max_tokens = int(pv.meta.parameters.get("max_tokens", 512))
    total_prompt = 0
    expected_nano = 0
    upper_nano = 0
    expected_completion = 0.0
    models: Counter[str] = Counter()
    basis: set[str] = set()
    history: dict[str, float | None] = {}
    sample = df if len(df) <= 2000 else df.sample(2000, random_state=0)
    for _, row in sample.iterrows():
        values = {n: row.get(n) for n in pv.meta.variables if n in df.columns}
        try:
            values = {n: _coerce(v, pv.meta.variables[n].type) for n, v in values.items()}
            rendered = gw.library.render(pv, {k: v for k, v in values.items() if v is not None})
        except Exception:  # noqa: S112 - such records fail individually at run time, at no cost
            continue
        tokens = count_messages(rendered.messages)
        decision = gw.router.route(
            meta=pv.meta,
            user=spec.user,
            department=spec.department,
            data_class=spec.data_class,
            prompt_tokens=tokens,
            max_tokens=max_tokens,
            priority=priority,  # type: ignore[arg-type]
        )
        if decision.model is None:
            continue
        model = decision.model
        if model not in history:
            history[model] = gw.ledger.mean_completion_tokens(pv.name, str(pv.version), model)
        known = history[model]
        completion = known if known is not None else float(max_tokens)
        basis.add("history" if history[model] is not None else "max_tokens")
        inp, out = gw.policy.models[model].price()
        total_prompt += tokens
        expected_completion += completion
        expected_nano += cost_nano(inp, out, tokens, round(completion))
        upper_nano += cost_nano(inp, out, tokens, max_tokens)
        models[model] += 1
    scale = Decimal(len(df)) / Decimal(len(sample))
    q = Decimal("0.000001")
    return {
        "records": len(df),
        "prompt_tokens": int(total_prompt * scale),
        "expected_completion_tokens": int(Decimal(expected_completion) * scale),
        "max_completion_tokens": max_tokens * len(df),
        "expected_cost_usd": str((usd(expected_nano) * scale).quantize(q)),
        "max_cost_usd": str((usd(upper_nano) * scale).quantize(q)),
        "basis": "+".join(sorted(basis)) or "none",
        "models": dict(models),
        "priority": priority,
    }


def _digest_keys(keys: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\x1f".join(keys).encode()).hexdigest()[:16]


def _safe(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)[:150]


# -- chunks ---------------------------------------------------------------------------------------
def run_chunk(gw: Gateway, plan: dict[str, Any], index: int) -> dict[str, Any]:
    chunk = plan["chunks"][index]
    df = read_input(plan["input"])
    if len(df) != plan["total_rows"]:
        raise InputError(
            f"{plan['input']} changed since the batch was planned",
            "do not modify the input while a batch runs; trigger a new run",
        )
    keys = _keys(df, plan["key_column"])
    pv = gw.library.resolve(plan["prompt"])
    cap = to_nano(plan["cost_cap_usd"]) if plan.get("cost_cap_usd") is not None else None
    rows = range(chunk["start"], chunk["stop"])
    notes: dict[int, str] = {}

    def requests() -> Iterator[Request]:
        for n, i in enumerate(rows):
            record = df.iloc[i]
            req_vars: dict[str, Any] = {}
            for name, var in pv.meta.variables.items():
                if name in df.columns and record[name] is not None:
                    try:
                        req_vars[name] = _coerce(record[name], var.type)
                    except ValueError:
                        notes[n] = f"render: variable {name!r} is not a valid {var.type}"
            yield Request(
                user=plan["user"],
                department=plan["department"],
                prompt=plan["prompt"],
                variables={} if n in notes else req_vars,
                record_key=keys[i],
                run_id=plan["run_id"],
                priority=plan["priority"],
                data_class=plan["data_class"],
            )

    # The engine runs the chunk at the provider's ceiling (rate limits, batched ledger writes); a budget
    # hard stop defers the rest of the chunk.
    slots: list[Result | None] = [None] * len(rows)

    def collect(n: int, result: Result) -> None:
        slots[n] = result

    Engine(gw, run_cost_cap_nano=cap).run(requests(), collect)
    results = [r for r in slots if r is not None]
    if len(results) != len(rows):  # pragma: no cover - the engine answers every record
        raise ReconciliationError(f"chunk {index}: {len(rows) - len(results)} record(s) got no result")
    for n, note in notes.items():
        results[n].reasons.insert(0, note)
    out_dir = Path(plan["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([_output_row(r) for r in results])
    part = out_dir / f"part-{index:05d}.parquet"
    tmp = part.with_suffix(".parquet.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, part)
    counts = Counter(_STATE_OF[r.status] for r in results)
    return {
        "index": index,
        "records": len(results),
        "counts": dict(counts),
        "part": str(part),
        "cost_usd": str(sum((r.cost_usd for r in results), Decimal(0))),
    }


def _output_row(r: Result) -> dict[str, Any]:
    return {
        "record_key": r.record_key,
        "status": _STATE_OF[r.status],
        "request_status": str(r.status),
        "output": r.output,
        "model": r.model,
        "prompt_version": r.prompt_version,
        "cost_usd": float(r.cost_usd),
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "latency_ms": r.latency_ms,
        "quality_score": r.quality_score,
        "reasons": r.reason,
        "call_id": r.call_id,
    }


# -- reconcile ------------------------------------------------------------------------------------
def reconcile(gw: Gateway, plan: dict[str, Any]) -> dict[str, Any]:
    df = read_input(plan["input"])
    keys = _keys(df, plan["key_column"])
    if _digest_keys(keys) != plan["keys_digest"]:
        raise ReconciliationError(f"{plan['input']} changed during the run", "rerun the batch on a stable input")
    rows = {r.record_key: r for r in gw.ledger.run_rows(plan["run_id"])}
    missing = [k for k in keys if k not in rows]
    if missing:
        raise ReconciliationError(
            f"{len(missing)} record(s) have no ledger row (first: {missing[:3]})", "retry the failed chunk tasks"
        )
    counts = Counter({s: 0 for s in BATCH_STATES})
    letters: list[dict[str, str]] = []
    for k in keys:
        row = rows[k]
        state = _STATE_OF[Status(row.status)]
        counts[state] += 1
        if state in ("failed", "deferred"):
            letters.append(
                {"record_key": k, "request_key": row.request_key, "status": state, "reason": row.reasons or row.status}
            )
    total = sum(counts.values())
    if total != plan["total_rows"]:
        raise ReconciliationError(f"input has {plan['total_rows']} rows but {total} are accounted for")
    gw.ledger.replace_dead_letters(plan["run_id"], letters)

    out_dir = Path(plan["output_dir"])
    parts = sorted(out_dir.glob("part-*.parquet"))
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()
    if len(frame) != plan["total_rows"] or set(frame["record_key"]) != set(keys):
        raise ReconciliationError(
            f"output parts hold {len(frame)} rows for {plan['total_rows']} input rows", "retry the failed chunk tasks"
        )
    # The ledger is the source of truth: refresh statuses from it (a retried chunk may have replayed).
    frame["status"] = [_STATE_OF[Status(rows[k].status)] for k in frame["record_key"]]
    results = out_dir / "results.parquet"
    tmp = results.with_suffix(".parquet.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, results)
    cost_nano_total = sum(r.cost_nanousd for r in rows.values())
    summary = {
        "run_id": plan["run_id"],
        "prompt": plan["prompt"],
        "records": plan["total_rows"],
        "counts": dict(counts),
        "cost_usd": str(usd(cost_nano_total)),
        "cost_by_department": {d: str(usd(c)) for d, c in gw.ledger.spend_by_department(plan["run_id"]).items()},
        "output": str(results),
        "dead_letters": len(letters),
        "ledger": gw.ledger.safe_url,
    }
    gw.ledger.save_batch_run(
        plan["run_id"],
        counts=dict(counts),
        status="reconciled",
        output_path=str(results),
        finished_at=datetime.now(UTC),
    )
    return summary


def run_batch(gw: Gateway, spec: BatchSpec) -> dict[str, Any]:
    """Plan, run every chunk and reconcile, in this process (the CLI twin of the DAG)."""
    plan = plan_batch(gw, spec)
    if spec.dry_run:
        return {
            "dry_run": True,
            "plan": {k: v for k, v in plan.items() if k != "chunks"},
            "chunks": len(plan["chunks"]),
        }
    for chunk in plan["chunks"]:
        run_chunk(gw, plan, chunk["index"])
    return reconcile(gw, plan)
