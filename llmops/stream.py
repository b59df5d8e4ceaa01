"""Streaming batches: records read incrementally from CSV or JSONL, results written incrementally as JSONL.

Memory stays flat with input size: the engine keeps a bounded window of records in flight, and a
result is written (and forgotten) as soon as its ledger row is committed. A rerun with the same run id
replays what the ledger already holds and calls only what is missing. ``llmops batch stream`` is the CLI.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmops.engine import Engine, EngineStats, json_line
from llmops.errors import InputError
from llmops.gateway import Gateway
from llmops.pricing import usd
from llmops.types import Request, Result


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a ``.csv`` (header row) or ``.jsonl`` file, one at a time."""
    suffix = path.suffix.lower()
    if not path.exists():
        raise InputError(f"input file {path} does not exist", "check the path")
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                if None in row:
                    raise InputError(
                        f"{path}: line {reader.line_num} has more fields than the header",
                        "quote fields that contain commas",
                    )
                yield {k: (v if v != "" else None) for k, v in row.items()}
        return
    if suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}: line {n} is not JSON ({exc.msg})", "fix that line") from None
                if not isinstance(obj, dict):
                    raise InputError(f"{path}: line {n} is not a JSON object", "write one object per line")
                yield obj
        return
    raise InputError(f"{path}: unsupported input type {suffix or '(none)'}", "use .csv or .jsonl")


def _check_keys(path: Path, key_column: str) -> int:
    """One streamed pass: every record has a unique key (a hash set, not the records, is kept)."""
    seen: set[bytes] = set()
    n = 0
    for n, rec in enumerate(iter_records(path), 1):
        key = rec.get(key_column)
        if key is None:
            raise InputError(f"{path}: record {n} has no {key_column!r}", f"give every record a {key_column}")
        digest = hashlib.blake2b(str(key).encode(), digest_size=12).digest()
        if digest in seen:
            raise InputError(f"{path}: duplicate record key {key!r}", "make the key column unique")
        seen.add(digest)
    if n == 0:
        raise InputError(f"{path}: no records", "supply at least one record")
    return n


def stream_batch(
    gw: Gateway,
    *,
    input_path: Path,
    output_path: Path,
    prompt: str,
    user: str,
    department: str,
    run_id: str,
    key_column: str = "id",
    model: str | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Run a file through the engine; results are appended to ``output_path`` (JSONL) as they settle."""
    pv = gw.library.resolve(prompt)
    total = _check_keys(input_path, key_column)
    missing = [n for n, v in pv.meta.variables.items() if v.required and v.default is None]
    first = next(iter_records(input_path))
    absent = [m for m in missing if m not in first]
    if absent:
        raise InputError(
            f"{input_path}: no field {', '.join(repr(m) for m in absent)} required by {pv.ref}",
            f"add the field(s); the prompt declares: {', '.join(pv.meta.variables)}",
        )
    names = list(pv.meta.variables)

    def requests() -> Iterator[Request]:
        for rec in iter_records(input_path):
            yield Request(
                user=user,
                department=department,
                prompt=pv.ref,
                variables={k: rec[k] for k in names if rec.get(k) is not None},
                record_key=str(rec[key_column]),
                run_id=run_id,
                model=model,
            )

    counts: Counter[str] = Counter()
    cost = 0
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_suffix(output_path.suffix + ".part")
    with tmp.open("w", encoding="utf-8") as out:

        def write(_index: int, result: Result) -> None:
            nonlocal cost
            counts[str(result.status)] += 1
            cost += result.cost_nanousd
            out.write(json_line(result) + "\n")

        eng = engine or Engine(gw)
        stats: EngineStats = eng.run(requests(), write)
    tmp.replace(output_path)
    return {
        "run_id": run_id,
        "records": total,
        "counts": dict(counts),
        "cost_usd": str(usd(cost)),
        "output": str(output_path),
        "elapsed_s": round(stats.elapsed_s, 3),
        "calls": stats.calls,
        "rate_limited": stats.rate_limited,
        "limits": stats.limits,
    }
