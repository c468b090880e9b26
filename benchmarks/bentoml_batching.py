"""Does BentoML's adaptive batching (`@bentoml.api(batchable=True, ...)`) serve concurrent single-text
embedding requests as well as our in-process micro-batcher (serving/engines/embedder.py)?

    python -m benchmarks.bentoml_batching                              # BentoML configs only
    python -m benchmarks.bentoml_batching --ours --unbatched --repeat 2  # + our server, a no-batching baseline

Each config `max_batch_size:max_latency_ms` starts `bentoml serve benchmarks.bentoml_batching_service:EmbedBatching`
(the same champion embedder as service.py), waits for /readyz, then drives it with wrk and
benchmarks/embed_bentoml.lua (one text per request): a short warm-up and a measured run at 1 connection, then
the same at N connections. `--ours` runs the identical procedure (same wrk, same texts, same counting) against
our server's /v1/embeddings; `--unbatched` against the service's non-batchable endpoint.

Goodput counts 2xx answers per second; every other answer is counted by status (503 = BentoML's dispatcher
shedding a request it predicts will miss max_latency_ms). Mean batch size comes from each server's /metrics.

wrk and the server share the machine's cores, and so does anything else running. Each measured run records
`foreign_cpu_share`: the share of all cores used by processes other than this server and wrk during the run
(/proc/stat minus their own CPU time). Before each run the script waits for the machine to be quiet, and a run
with more than 10% foreign CPU is repeated once. Compare only figures from one report.
Servers get a private BENTOML_HOME (state/bench/bentoml_home): BentoML's Prometheus multiprocess directory
lives there and a server started elsewhere (e.g. by the test suite) wipes the shared one at start-up.
Writes state/bench/bentoml_batching.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import resource
import statistics
import subprocess
import time
from pathlib import Path

import httpx

from serving.launch import Launched as Server
from serving.launch import ServerStartError, started_server

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "benchmarks" / "embed_bentoml.lua"
TARGET = "benchmarks.bentoml_batching_service:EmbedBatching"
REPORT = ROOT / "state" / "bench" / "bentoml_batching.json"
LOG_DIR = ROOT / "state" / "bench"
TICK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
BUSY_SHARE = 0.10  # a measured run with more foreign CPU than this is repeated once
QUIET_SHARE = 0.05  # ... and each run waits (up to --quiet-wait s) for less than this first
BENTO_BATCH = ("bentoml_service_adaptive_batch_size", 'method_name="encode"')
OUR_BATCH = ("modelplatform_batch_size", 'engine="embedder"')


# --- CPU accounting: how much of the machine did something other than this server and wrk use? ---


def _busy_s() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat; idle and iowait excluded)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / TICK


def _tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by the live processes descending from `root` (itself included): bentoml's
    workers run in sessions of their own (circus), so neither the process group nor the session finds them."""
    procs: dict[int, tuple[int, int]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        procs[int(pid)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += procs.get(pid, (0, 0))[1]
        todo.extend(children.get(pid, []))
    return total / TICK


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class CpuWindow:
    """Foreign CPU share over a window: (machine busy - server - finished children - self) / (cores x wall)."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.t0, self.busy0 = time.monotonic(), _busy_s()
        self.srv0, self.kids0 = _tree_cpu_s(server_pid), _children_cpu_s()
        self.self0 = time.process_time()

    def close(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        busy = _busy_s() - self.busy0
        srv = _tree_cpu_s(self.pid) - self.srv0
        kids = _children_cpu_s() - self.kids0
        me = time.process_time() - self.self0
        foreign = max(0.0, busy - srv - kids - me)
        return {
            "server_cpu_s": round(srv, 2),
            "wrk_cpu_s": round(kids, 2),
            "foreign_cpu_s": round(foreign, 2),
            "foreign_cpu_share": round(foreign / (NCPU * wall), 3),
        }


def wait_quiet(server: Server, max_wait_s: float) -> float:
    """Wait until other processes use less than QUIET_SHARE of the machine over 2 s; returns seconds waited."""
    start = time.monotonic()
    while True:
        w = CpuWindow(server.pid)
        time.sleep(2)
        share = w.close()["foreign_cpu_share"]
        waited = time.monotonic() - start
        if share < QUIET_SHARE or waited > max_wait_s:
            if waited > 3:
                print(f"      (waited {waited:.0f}s for a quiet machine; foreign CPU now {share:.0%})", flush=True)
            return round(waited, 1)
        time.sleep(3)


# --- load ---


def wrk(url: str, connections: int, seconds: float, threads: int, body_kind: str) -> dict[str, float]:
    """One wrk run; returns the RESULT line of embed_bentoml.lua as numbers."""
    t = max(1, min(threads, connections))  # wrk needs connections >= threads
    cmd = ["/usr/bin/wrk", f"-t{t}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    # --timeout: wrk's default 2 s would turn queued-but-answered requests into silent socket timeouts
    cmd += ["--timeout", "60s", "-s", str(LUA), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "BODY_KIND": body_kind})
    line = next(x for x in reversed(out.stdout.splitlines()) if x.startswith("RESULT "))
    fields = {k: float(v) for k, v in (p.split("=") for p in line.split()[1:])}
    return {"connections": connections, "wrk_threads": t, **fields}


def metric_sums(url: str, name: str, label: str) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram `name` over the series whose labels contain `label`."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = {"sum": 0.0, "count": 0.0}
    for m in re.finditer(rf"^{name}_(sum|count)\{{([^}}]*)\}} ([0-9.eE+-]+)$", text, re.M):
        if label in m.group(2):
            total[m.group(1)] += float(m.group(3))
    return total["sum"], total["count"]


def one_run(
    server: Server, path: str, c: int, a: argparse.Namespace, body_kind: str, batch: tuple[str, str] | None
) -> dict[str, object]:
    waited = wait_quiet(server, a.quiet_wait)
    before = metric_sums(server.url, *batch) if batch else None
    cpu = CpuWindow(server.pid)
    r: dict[str, object] = dict(wrk(server.url + path, c, a.seconds, a.threads, body_kind))
    r |= cpu.close()
    r["waited_for_quiet_s"] = waited
    if before is not None and batch:
        after = metric_sums(server.url, *batch)
        n = after[1] - before[1]
        r["batches"] = int(n)
        r["mean_batch"] = round((after[0] - before[0]) / n, 2) if n > 0 else None
    return r


def measure(
    server: Server, path: str, a: argparse.Namespace, body_kind: str, batch: tuple[str, str] | None
) -> dict[str, object]:
    """Warm-up + measured run at 1 connection, then at `a.clients`; a run on a busy machine is repeated once."""
    res: dict[str, object] = {}
    for c in (1, a.clients):
        if a.warmup > 0:
            wrk(server.url + path, c, a.warmup, a.threads, body_kind)
        r = one_run(server, path, c, a, body_kind, batch)
        if r["foreign_cpu_share"] > BUSY_SHARE:  # type: ignore[operator]
            print(f"    {c:>3} conn: {_fmt(r)}  -> busy machine, once more", flush=True)
            r = one_run(server, path, c, a, body_kind, batch) | {"repeated_busy": r}
        res[f"c{c}"] = r
        print(f"    {c:>3} conn: {_fmt(r)}", flush=True)
    one, many = res["c1"], res[f"c{a.clients}"]
    res["ratio"] = round(many["goodput"] / one["goodput"], 2) if one["goodput"] else None  # type: ignore[index]
    return res


def _fmt(r: dict[str, object]) -> str:
    return (
        f"goodput {r['goodput']:.1f}/s  ok {int(r['ok'])}  503 {int(r['s503'])}  429 {int(r['s429'])}  "  # type: ignore[call-overload]
        f"504 {int(r['s504'])}  other {int(r['sother'])}  sock_err {int(r['sock_timeout'] + r['sock_read'])}  "  # type: ignore[call-overload,operator]
        f"p50 {r['p50_ms']:.0f} ms  p99 {r['p99_ms']:.0f} ms  batch {r.get('mean_batch')}  "
        f"foreign_cpu {r['foreign_cpu_share']:.0%}"
    )


def table(rows: list[dict[str, object]], clients: int) -> str:
    n = clients
    head = (
        f"{'server':<44} {'rep':>3} {'1c 2xx/s':>9} {f'{n}c 2xx/s':>10} {'ratio':>6} {f'{n}c 503':>8} "
        f"{f'{n}c non2xx':>11} {f'{n}c p50ms':>10} {f'{n}c p99ms':>10} {f'{n}c batch':>9} {'foreign%':>9}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        one, many = row["c1"], row[f"c{n}"]  # type: ignore[index]
        foreign = max(one["foreign_cpu_share"], many["foreign_cpu_share"])
        lines.append(
            f"{row['label']:<44} {row['rep']:>3} {one['goodput']:>9.1f} {many['goodput']:>10.1f} "
            f"{row['ratio'] or 0:>6.2f} {int(many['s503']):>8} {int(many['non2xx']):>11} {many['p50_ms']:>10.0f} "
            f"{many['p99_ms']:>10.0f} {many.get('mean_batch')!s:>9} {foreign:>9.0%}"
        )
    return "\n".join(lines)


def summary(rows: list[dict[str, object]], clients: int) -> list[dict[str, object]]:
    """Median over repetitions, per server."""
    out = []
    for label in dict.fromkeys(r["label"] for r in rows):
        rs = [r for r in rows if r["label"] == label]
        g1 = statistics.median(r["c1"]["goodput"] for r in rs)  # type: ignore[index]
        gn = statistics.median(r[f"c{clients}"]["goodput"] for r in rs)  # type: ignore[index]
        out.append(
            {
                "label": label,
                "reps": len(rs),
                "goodput_1": round(g1, 1),
                f"goodput_{clients}": round(gn, 1),
                "ratio_of_medians": round(gn / g1, 2) if g1 else None,
                f"non2xx_{clients}_total": int(sum(r[f"c{clients}"]["non2xx"] for r in rs)),  # type: ignore[index]
                f"s503_{clients}_total": int(sum(r[f"c{clients}"]["s503"] for r in rs)),  # type: ignore[index]
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--configs",
        default="32:1000,32:10000,32:60000,128:1000",
        help="max_batch_size:max_latency_ms pairs (ours: embed_max_batch_size 32; 128:1000 = FACTS' naive service)",
    )
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--warmup", type=float, default=3, help="seconds of unmeasured load before each run")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (capped at the connection count)")
    ap.add_argument("--repeat", type=int, default=1, help="run every server this many times, interleaved")
    ap.add_argument("--quiet-wait", type=float, default=120, help="max seconds to wait for a quiet machine per run")
    ap.add_argument("--ours", action="store_true", help="also measure our server (service.py) the same way")
    ap.add_argument("--unbatched", action="store_true", help="also measure the non-batchable endpoint")
    a = ap.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per /readyz and /metrics poll otherwise

    from serving.registry import fetch
    from serving.settings import load_settings

    settings = load_settings()
    emb = fetch(settings.embedder_name, settings.serving.embedder_alias, settings)
    print(f"embedder: {settings.embedder_name} version {emb.version} at {emb.path}", flush=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    home = LOG_DIR / "bentoml_home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTO_EMBEDDER_PATH": str(emb.path)}
    configs = [tuple(int(x) for x in c.split(":")) for c in a.configs.split(",")]
    rows: list[dict[str, object]] = []

    try:
        for rep in range(1, a.repeat + 1):
            for i, (size, lat) in enumerate(configs):
                label = f"bentoml batchable size={size} latency_ms={lat}"
                print(f"[rep {rep}] {label}", flush=True)
                cenv = {**env, "BATCH_MAX_SIZE": str(size), "BATCH_MAX_LATENCY_MS": str(lat)}
                with started_server(ROOT, LOG_DIR / f"bentoml_batching_{size}_{lat}.log", cenv, target=TARGET) as srv:
                    res = measure(srv, "/encode", a, "bentoml", BENTO_BATCH)
                    rows.append({"label": label, "rep": rep, "max_batch_size": size, "max_latency_ms": lat, **res})
                    if a.unbatched and i == 0:
                        label = "bentoml non-batchable (1 request = 1 forward)"
                        print(f"[rep {rep}] {label}", flush=True)
                        res = measure(srv, "/encode_unbatched", a, "bentoml", None)
                        rows.append({"label": label, "rep": rep, **res})
            if a.ours:
                label = "ours: service.py micro-batcher (32, 5 ms)"
                print(f"[rep {rep}] {label}", flush=True)
                with started_server(ROOT, LOG_DIR / "bentoml_batching_ours.log", env) as srv:
                    rows.append({"label": label, "rep": rep, **measure(srv, "/v1/embeddings", a, "openai", OUR_BATCH)})
    except ServerStartError as e:
        raise SystemExit(str(e)) from None

    print()
    print(table(rows, a.clients))
    med = summary(rows, a.clients)
    if a.repeat > 1:
        print("\nmedians over repetitions:")
        for m in med:
            print("  " + "  ".join(f"{k}={v}" for k, v in m.items()))
    print(f"\nwrk and the server share {NCPU} cores; figures compare only within this run.")
    result = {
        "question": "BentoML adaptive batching vs our micro-batcher, concurrent single-text embedding requests",
        "embedder": {"name": settings.embedder_name, "version": emb.version},
        "clients": a.clients,
        "seconds": a.seconds,
        "warmup_s": a.warmup,
        "wrk_threads": a.threads,
        "repeat": a.repeat,
        "cpu_count": NCPU,
        "machine": platform.processor() or platform.machine(),
        "note": (
            "wrk and server share the same cores; goodput = 2xx/s; latency percentiles over all answers; "
            "foreign_cpu_share = CPU used by other processes during the run / (cores x wall)"
        ),
        "summary": med,
        "rows": rows,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {REPORT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
