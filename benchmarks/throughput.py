"""Throughput benchmark: the batch engine against plain ``litellm.acompletion`` on the simulator.

Every scenario starts a fresh simulator in its own process (so its CPU is not counted as ours), runs
a baseline of plain ``litellm.acompletion`` calls with the engine's concurrency, then a fresh simulator
again for the engine on the full request path (access, guard, render, route, budget reservations,
checks, ledger on SQLite, logs). It prints, per scenario:

* achieved throughput / theoretical ceiling, where the ceiling is the time bound of
  max(N·latency/concurrency, (N − burst_req)/RPM-rate + latency, (N·charge − burst_tok)/TPM-rate + latency,
  N·CPU-per-request of the bare client on one core) — ``charge`` = prompt tokens + max_tokens;
* the 429 share of the engine's attempts, and the retries that arrived before their Retry-After
  (counted by the simulator: a request with the same fingerprint arriving before the deadline it got);
* the engine's CPU per record / the baseline's CPU per call (process CPU time, same process);
* p50/p95 platform overhead per record in µs (CPU of the platform's own stages, 2 KB records);
* a ledger check: rows = records, each once, and the summed cost equals the cost of what the simulator
  billed, exactly, in integer nano-USD;
* peak RSS while streaming 1k, 10k and 100k records (JSONL in, JSONL out) through the engine.

``--ci`` runs a short variant (fewer records, no memory runs) and exits non-zero when a same-run *ratio*
regresses past its guard (see ``Outcome.failures``) or an exactness check fails; it never judges
absolute times. Run: ``.venv/bin/python benchmarks/throughput.py [--ci] [--memory 1000,10000,100000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import yaml  # noqa: E402

from llmops.simulator import SimConfig  # noqa: E402
from llmops.simulator.behaviour import MODELS  # noqa: E402

SIM_KEY = "sim-bench-key"
MODEL = "sim-small"
PROMPT = "support_ticket_classify@production"
USER = "hana.sato@example.com"
DEPT = "support"
WORDS = (
    "invoice refund charge card payment login password account locked crash error app screen update "
    "delivery parcel shipping address late order cancel subscription plan upgrade please help today"
).split()


@dataclass
class Scenario:
    name: str
    records: int
    concurrency: int
    rpm: int
    tpm: int
    latency_scale: float = 1.0
    known: bool = True  # the catalog gives the engine the limits
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_s: float = 60.0
    hang_s: float = 120.0
    bucket_s: float = 1.0
    floor: float = 0.95  # target: throughput / ceiling
    max_429: float | None = 0.01


def scenarios(ci: bool) -> list[Scenario]:
    k = 0.15 if ci else 1.0
    n = lambda full: max(60, int(full * k))  # noqa: E731
    return [
        Scenario("rpm-bound", n(720), 32, rpm=1200, tpm=100_000_000),
        Scenario("tpm-bound", n(480), 32, rpm=1_000_000, tpm=720_000),
        Scenario("concurrency-bound", n(640), 16, rpm=1_000_000, tpm=1_000_000_000, latency_scale=10),
        Scenario("adaptive (limits unknown)", n(720), 32, rpm=1200, tpm=100_000_000, known=False, floor=0.85,
                 max_429=None),
        Scenario("faults (5% 5xx + 5% timeouts)", n(720), 32, rpm=1200, tpm=100_000_000, error_rate=0.05,
                 timeout_rate=0.05, timeout_s=0.5, hang_s=3.0, floor=0.80, max_429=None),
    ]  # fmt: skip


# -- data ---------------------------------------------------------------------------------------------
def record(i: int, rng: random.Random) -> dict[str, str]:
    words: list[str] = []
    size = 0
    while size < 2000:  # ~2 KB body
        w = rng.choice(WORDS)
        words.append(w)
        size += len(w) + 1
        if rng.random() < 0.08:
            words[-1] += "."
    return {
        "id": f"r{i:07d}",
        "subject": f"Ticket {i}: {rng.choice(WORDS)} {rng.choice(WORDS)}",
        "body": f"Order {100000 + i}. " + " ".join(words),
    }


def write_jsonl(path: Path, n: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps(record(i, rng)) + "\n")


# -- simulator in its own process ---------------------------------------------------------------------
def _serve(config: SimConfig) -> None:
    from llmops.simulator import serve

    serve(config)


class Sim:
    def __init__(self, sc: Scenario) -> None:
        from llmops.platform import free_port

        self.port = free_port()
        cfg = SimConfig(
            port=self.port,
            api_key=SIM_KEY,
            latency_scale=sc.latency_scale,
            model_limits={MODEL: (sc.rpm, sc.tpm)},
            error_rate=sc.error_rate,
            timeout_rate=sc.timeout_rate,
            hang_seconds=sc.hang_s,
            bucket_seconds=sc.bucket_s,
            seed=11,
        )
        self.proc = multiprocessing.get_context("spawn").Process(target=_serve, args=(cfg,), daemon=True)
        self.proc.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(self.health_url, timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("simulator did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(self.health_url, timeout=10).json())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(10)


# -- platform set-up ----------------------------------------------------------------------------------
def make_gateway(work: Path, sim: Sim, sc: Scenario) -> Any:
    from llmops.gateway import Gateway
    from llmops.settings import load_settings

    policy = yaml.safe_load((ROOT / "llmops.yaml").read_text())
    policy["departments"][DEPT]["monthly_budget_usd"] = 1_000_000
    # The provider's limits are the subject here; the policy's per-person/department quotas are not.
    for section in ("departments", "people"):
        for entry_ in policy[section].values():
            entry_.pop("rate_limit", None)
    entry = policy["models"][MODEL]
    entry.pop("rpm", None)
    entry.pop("tpm", None)
    if sc.known:
        entry["rpm"], entry["tpm"] = sc.rpm, sc.tpm
    work.mkdir(parents=True, exist_ok=True)
    pfile = work / "llmops.yaml"
    pfile.write_text(yaml.safe_dump(policy, sort_keys=False))
    settings = load_settings(
        home=ROOT,
        data_dir=work / "data",
        policy_file=pfile,
        simulator_port=sim.port,
        simulator_api_key=SIM_KEY,
        concurrency=sc.concurrency,
        request_timeout_s=sc.timeout_s,
        max_retries=5,
    )
    return Gateway(settings)


def rendered_messages(gw: Any, path: Path, limit: int | None = None) -> list[list[dict[str, str]]]:
    from llmops.stream import iter_records

    pv = gw.library.resolve(PROMPT)
    out = []
    for n, rec in enumerate(iter_records(path)):
        if limit is not None and n >= limit:
            break
        out.append(gw.library.render(pv, {"subject": rec["subject"], "body": rec["body"]}).messages)
    return out


# -- baseline: plain litellm.acompletion ----------------------------------------------------------------
async def baseline(sim: Sim, messages: list[list[dict[str, str]]], sc: Scenario) -> dict[str, Any]:
    from llmops.provider import litellm_module

    litellm = litellm_module()
    sem = asyncio.Semaphore(sc.concurrency)
    calls = 0

    async def one(msgs: list[dict[str, str]]) -> None:
        nonlocal calls
        for _ in range(50):
            async with sem:
                calls += 1
                try:
                    await litellm.acompletion(
                        model=f"openai/{MODEL}",
                        messages=msgs,
                        api_base=sim.url,
                        api_key=SIM_KEY,
                        max_tokens=60,
                        temperature=0.0,
                        timeout=sc.timeout_s,
                        num_retries=0,
                        max_retries=0,
                    )
                    return
                except Exception as exc:  # the minimal correct client: wait Retry-After (or 0.5 s), retry
                    headers = getattr(exc, "litellm_response_headers", None) or {}
                    wait = headers.get("retry-after-ms")
                    delay = float(wait) / 1000 if wait else 0.5
            await asyncio.sleep(delay)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(m) for m in messages))
    return {"cpu": time.process_time() - cpu0, "elapsed": time.perf_counter() - t0, "calls": calls}


def warm_platform(gw: Any) -> None:
    """One-time loads (guard analyzers and learned layer, tokenizer tables, jsonschema import) happen before
    measuring, as litellm's do for both clients (``warm_up``): unwarmed, the run's first record took ~95 ms."""
    from llmops.checks import check_output

    gw.warm_up()
    check_output('{"category": "billing"}', gw.library.resolve(PROMPT).meta.output)


async def warm_up(sim: Sim, messages: list[list[dict[str, str]]]) -> None:
    from llmops.provider import litellm_module

    litellm = litellm_module()
    for m in messages[:5]:
        await litellm.acompletion(
            model=f"openai/{MODEL}", messages=m, api_base=sim.url, api_key=SIM_KEY, max_tokens=60, num_retries=0
        )


# -- the engine run ---------------------------------------------------------------------------------------
def engine_run(gw: Any, path: Path, out: Path, sc: Scenario, run_id: str, profile: bool) -> tuple[dict[str, Any], Any]:
    from llmops.engine import Engine
    from llmops.stream import stream_batch

    eng = Engine(gw, concurrency=sc.concurrency, use_catalog_limits=sc.known, profile=profile)
    cpu0 = time.process_time()
    summary = stream_batch(
        gw,
        input_path=path,
        output_path=out,
        prompt=PROMPT,
        user=USER,
        department=DEPT,
        run_id=run_id,
        model=MODEL,
        engine=eng,
    )
    summary["cpu"] = time.process_time() - cpu0
    return summary, eng


def ledger_check(gw: Any, run_id: str, records: int, billed: dict[str, int]) -> dict[str, Any]:
    from llmops.pricing import cost_nano

    rows = gw.ledger.run_rows(run_id)
    inp, out = gw.policy.models[MODEL].price()
    expected = 0
    billed_calls = 0
    for key, count in billed.items():
        _model, p, c = key.split(":")
        expected += count * cost_nano(inp, out, int(p), int(c))
        billed_calls += count
    ledger_cost = sum(r.cost_nanousd for r in rows)
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return {
        "rows": len(rows),
        "unique_records": len({r.record_key for r in rows}),
        "records": records,
        "ledger_nano": ledger_cost,
        "billed_nano": expected,
        "billed_calls": billed_calls,
        "statuses": statuses,
        "ok": len(rows) == records == len({r.record_key for r in rows}) and ledger_cost == expected,
    }


def pct(ordered: list[int], q: float) -> float:
    """The q-quantile of an ascending list (nearest rank below), 0 for none."""
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else 0.0


@dataclass
class Outcome:
    name: str
    ratio: float
    floor: float
    share_429: float
    max_429: float | None
    early: int
    cpu_ratio: float
    p50_us: float
    p95_us: float
    ledger_ok: bool
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def vs_baseline(self) -> float:
        return float(self.detail["achieved_rps"]) / float(self.detail["baseline_rps"])

    def failures(self, ci: bool = False) -> list[str]:
        """Targets missed. ``ci``: regression guards on same-run ratios only, with margins for a shared
        machine — engine throughput ≥ 0.5 × the bare-litellm baseline's (the theoretical ceiling ignores
        CPU contention, the baseline suffers it too), CPU ≤ 2×, 429 share ≤ 3 %; exactness (retries
        before Retry-After, the ledger) stays strict."""
        out = []
        if ci and self.vs_baseline < 0.5:
            out.append(f"{self.name}: throughput {self.vs_baseline:.2f}× the bare-litellm baseline < 0.5")
        if not ci and self.ratio < self.floor:
            out.append(f"{self.name}: throughput {self.ratio:.2f} of ceiling < {self.floor}")
        max_429 = None if self.max_429 is None else (0.03 if ci else self.max_429)
        if max_429 is not None and self.share_429 > max_429:
            out.append(f"{self.name}: 429 share {self.share_429:.2%} > {max_429:.0%}")
        if self.early:
            out.append(f"{self.name}: {self.early} retries before Retry-After")
        cpu_cap = 2.0 if ci else 1.25
        if self.cpu_ratio > cpu_cap:
            out.append(f"{self.name}: CPU/request {self.cpu_ratio:.2f}× baseline > {cpu_cap}×")
        if self.p95_us > 1000 and not ci:
            out.append(f"{self.name}: p95 overhead {self.p95_us:.0f} µs > 1000 µs")
        if not self.ledger_ok:
            out.append(f"{self.name}: ledger check failed")
        return out


def run_scenario(sc: Scenario, work: Path) -> Outcome:
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"{sc.name.split()[0]}.jsonl"
    write_jsonl(data, sc.records)
    # baseline
    sim = Sim(sc)
    try:
        gw = make_gateway(work / "base", sim, sc)
        msgs = rendered_messages(gw, data)
        gw.close()
        asyncio.run(warm_up(sim, msgs))
        base_sim0 = sim.stats()
        base = asyncio.run(baseline(sim, msgs, sc))
        base_sim = sim.stats()
    finally:
        sim.stop()
    base_calls = base_sim["requests"] - base_sim0["requests"]
    base_cpu_per_call = base["cpu"] / max(1, base_calls)
    # engine
    sim = Sim(sc)
    try:
        gw = make_gateway(work / "engine", sim, sc)
        warm_platform(gw)
        asyncio.run(warm_up(sim, msgs))
        sim0 = sim.stats()
        summary, eng = engine_run(gw, data, work / "out.jsonl", sc, f"bench-{sc.name.split()[0]}", profile=True)
        st = sim.stats()
    finally:
        sim.stop()
    calls = st["requests"] - sim0["requests"]
    limited = st["rate_limited"] - sim0["rate_limited"]
    billed = dict(st["billed"])
    for key, count in sim0["billed"].items():  # the warm-up calls are not part of the run
        billed[key] -= count
    check = ledger_check(gw, f"bench-{sc.name.split()[0]}", sc.records, {k: v for k, v in billed.items() if v})
    gw.close()

    # theoretical ceiling
    sm = MODELS[MODEL]
    n = sc.records
    completion = statistics.fmean(int(k.split(":")[2]) for k in billed for _ in range(billed[k])) if billed else 0
    prompt_tokens = statistics.fmean(int(k.split(":")[1]) for k in billed for _ in range(billed[k])) if billed else 0
    latency = (sm.latency_ms + sm.ms_per_token * completion) * sc.latency_scale / 1000
    charge = prompt_tokens + 60
    bounds = {
        "concurrency": n * latency / sc.concurrency,
        "rpm": max(0.0, (n - sc.rpm / 60 * sc.bucket_s)) / (sc.rpm / 60) + latency,
        "tpm": max(0.0, (n * charge - sc.tpm / 60 * sc.bucket_s)) / (sc.tpm / 60) + latency,
        "cpu": n * base_cpu_per_call,
    }
    bound = max(bounds, key=lambda b: bounds[b])
    ceiling = n / bounds[bound]
    achieved = n / summary["elapsed_s"]
    ov = sorted(eng.overheads)
    p50 = pct(ov, 0.5) / 1000
    p95 = pct(ov, 0.95) / 1000
    cpu_ratio = (summary["cpu"] / n) / base_cpu_per_call
    stages: dict[str, list[int]] = {}
    for record in eng.stage_overheads:
        for stage, ns in record.items():
            stages.setdefault(stage, []).append(ns)
    by_stage = {stage: [round(pct(sorted(v), q) / 1000) for q in (0.5, 0.95)] for stage, v in sorted(stages.items())}
    return Outcome(
        sc.name,
        achieved / ceiling,
        sc.floor,
        limited / max(1, calls),
        sc.max_429,
        st["early_retries"] - sim0["early_retries"],
        cpu_ratio,
        p50,
        p95,
        check["ok"],
        {
            "records": n,
            "achieved_rps": round(achieved, 2),
            "ceiling_rps": round(ceiling, 2),
            "bound": bound,
            "baseline_rps": round(len(msgs) / base["elapsed"], 2),
            "baseline_cpu_ms": round(base_cpu_per_call * 1000, 3),
            "engine_cpu_ms": round(summary["cpu"] / n * 1000, 3),
            "calls": calls,
            "429": limited,
            "limits": summary["limits"],
            "counts": summary["counts"],
            "ledger": check,
            "stages_us": by_stage,  # p50/p95 of each stage's CPU share per record
        },
    )


# -- memory --------------------------------------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRss:
    """Samples the process's resident set every 50 ms until stopped; returns the peak."""

    def __init__(self) -> None:
        self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def memory_runs(sizes: list[int], work: Path) -> list[tuple[int, float, float, bool]]:
    sc = Scenario("memory", 0, 64, rpm=100_000_000, tpm=2_000_000_000, latency_scale=0.05)
    out = []
    work.mkdir(parents=True, exist_ok=True)
    sim = Sim(sc)
    try:
        for size in sizes:
            data = work / f"mem-{size}.jsonl"
            write_jsonl(data, size, seed=size)
            gw = make_gateway(work / f"mem-{size}", sim, sc)
            sampler = _PeakRss()
            started = time.perf_counter()
            engine_run(gw, data, work / f"mem-{size}.out.jsonl", sc, f"mem-{size}", profile=False)
            peak = sampler.stop()
            rows = len(gw.ledger.run_rows(f"mem-{size}"))
            gw.close()
            out.append((size, peak / 2**20, time.perf_counter() - started, rows == size))
            data.unlink()
    finally:
        sim.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ci", action="store_true", help="short variant; exit 1 when a ratio misses its floor")
    ap.add_argument("--only", help="run only scenarios whose name starts with this")
    ap.add_argument("--memory", default=None, help="record counts for the memory runs (default 1000,10000,100000)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--memory-only", action="store_true", help="run only the memory runs")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="llmops-bench-"))
    outcomes: list[Outcome] = []
    try:
        for sc in scenarios(args.ci):
            if args.memory_only or (args.only and not sc.name.startswith(args.only)):
                continue
            o = run_scenario(sc, work / sc.name.split()[0])
            if args.ci and o.failures(ci=True) and o.early == 0 and o.ledger_ok:
                # a shared CI machine is noisy: a ratio miss is re-measured once; exactness misses are not
                print(f"re-running {sc.name}: {o.failures(ci=True)}", file=sys.stderr, flush=True)
                again = run_scenario(sc, work / (sc.name.split()[0] + "-again"))
                o = again if len(again.failures(ci=True)) < len(o.failures(ci=True)) else o
            outcomes.append(o)
            print(f"done {sc.name}: {json.dumps(o.detail)}", file=sys.stderr, flush=True)
        default_sizes = "" if args.ci else "1000,10000,100000"
        sizes = [int(s) for s in (args.memory if args.memory is not None else default_sizes).split(",") if s]
        mem = memory_runs(sizes, work / "memory") if sizes and not args.only else []
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nthroughput benchmark ({'ci' if args.ci else 'full'}), {os.cpu_count()} cores")
    print(
        "| scenario | records | achieved/ceiling (rps) | ratio | target | bound | vs baseline | 429 share "
        "| early retries | CPU/req vs litellm | overhead p50/p95 µs | ledger |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|")
    for o in outcomes:
        d = o.detail
        print(
            f"| {o.name} | {d['records']} | {d['achieved_rps']}/{d['ceiling_rps']} | {o.ratio:.3f} | ≥ {o.floor} "
            f"| {d['bound']} | {o.vs_baseline:.2f}× ({d['baseline_rps']}) | {o.share_429:.2%} | {o.early} "
            f"| {o.cpu_ratio:.2f}× "
            f"({d['engine_cpu_ms']}/{d['baseline_cpu_ms']} ms) | {o.p50_us:.0f}/{o.p95_us:.0f} "
            f"| {'ok' if o.ledger_ok else 'MISMATCH'} {d['ledger']['rows']} rows, "
            f"{d['ledger']['ledger_nano']}={d['ledger']['billed_nano']} nUSD |"
        )
    stage_names = sorted({st for o in outcomes for st in o.detail["stages_us"]})
    if stage_names:
        print("\nplatform overhead by stage, µs p50/p95 per record (CPU; reserve and write are shares of a batch)")
        print("| scenario | " + " | ".join(stage_names) + " |")
        print("|---|" + "---:|" * len(stage_names))
        for o in outcomes:
            cells = [o.detail["stages_us"].get(st) for st in stage_names]
            print(f"| {o.name} | " + " | ".join(f"{c[0]}/{c[1]}" if c else "-" for c in cells) + " |")
    failures = [f for o in outcomes for f in o.failures(args.ci)]
    if mem:
        print("\n| records | peak RSS (MB) | elapsed (s) | ledger rows = records |")
        print("|---:|---:|---:|---|")
        for size, peak, elapsed, ok in mem:
            print(f"| {size} | {peak:.1f} | {elapsed:.1f} | {'yes' if ok else 'NO'} |")
            if not ok:
                failures.append(f"memory {size}: ledger rows != records")
        by = {s: p for s, p, _, _ in mem}
        if 10_000 in by and 100_000 in by:
            growth = by[100_000] - by[10_000]
            print(f"\nmemory growth 10k → 100k records: {growth:.1f} MB (target ≤ 50 MB)")
            if growth > 50:
                failures.append(f"memory growth {growth:.1f} MB > 50 MB")
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes] + [{"memory": mem}], indent=2, default=str))
    if failures:
        print("\nMISSED:\n- " + "\n- ".join(failures))
    return 1 if (failures and args.ci) else 0


if __name__ == "__main__":
    raise SystemExit(main())
