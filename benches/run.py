#!/usr/bin/env python3
"""The benchmark suite, in one command: python3 benches/run.py [--scale 0.1] [--seconds 10]

Builds tandem, the load generator and the baseline (release), then for each backend (SQLite in a
temporary directory, PostgreSQL in a fresh database named by --pg-database on --pg-url's server):
starts `tandem serve`, seeds the clinic through FHIR REST, measures idle and peak RSS, runs every
scenario of benches/load.rs with --concurrency clients for --seconds each, measures the database's
size, restarts the server on the now-filled database and times it to its first ready /readyz, and
notes idle RSS there. The baseline (benches/baseline.rs, a fixed FHIR JSON body) is measured with
the same read scenario. The results go to benches/results/RESULTS.md (a markdown table with the
machine's description) and benches/results/throughput.svg (a plot). Standard library only.
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benches", "results")
PORT = 8097
BASELINE_PORT = 8099
# Every process started, stopped on the way out whatever happens.
STARTED = []


def build():
    """Release builds of the server, the load generator and the baseline; returns their paths.

    One `cargo build --release` for all three: `cargo bench --no-run` would build every crate again
    under the bench profile (7 more minutes on 2 cores), for the same code generation settings."""
    out = subprocess.run(
        ["cargo", "build", "--release", "--locked", "--message-format=json", "--bin", "tandem",
         "--bench", "load", "--bench", "baseline"],
        cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    exes = {}
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["kind"] == ["bench"]:
            exes[msg["target"]["name"]] = msg["executable"]
    server = os.path.join(ROOT, "target", "release", "tandem")
    return server, exes["load"], exes["baseline"]


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def wait_ready(url, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.005)
    sys.exit(f"{url} not ready within {timeout} s")


class Server:
    def __init__(self, exe, env, log):
        self.exe, self.env, self.log = exe, env, log
        self.proc = None

    def start(self):
        """Starts the server; returns seconds from spawn to the first ready /readyz."""
        t = time.monotonic()
        self.proc = subprocess.Popen([self.exe, "serve"], env=self.env, stdout=self.log, stderr=self.log)
        STARTED.append(self.proc)
        wait_ready(f"http://127.0.0.1:{PORT}/readyz", self.proc)
        return time.monotonic() - t

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def load(exe, args, *extra):
    cmd = [exe, "--base", f"http://127.0.0.1:{args['port']}", "--json", "--concurrency", str(args["concurrency"]),
           "--seconds", str(args["seconds"]), "--scale", str(args["scale"]), *extra]
    env = dict(os.environ)
    if args.get("token"):
        env["TANDEM_BENCH_TOKEN"] = args["token"]
    for key, var in [("member_token", "TANDEM_BENCH_MEMBER_TOKEN"), ("therapist_token", "TANDEM_BENCH_THERAPIST_TOKEN")]:
        if args.get(key):
            env[var] = args[key]
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        sys.exit(f"the load generator failed ({out.returncode}); its messages are above")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def psql(url, sql):
    return subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", url, "-c", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


class Analyzer:
    """ANALYZE every few seconds while a PostgreSQL server runs with autovacuum off.

    A production PostgreSQL runs autovacuum (the default), which keeps the planner's statistics
    current as tables grow. Some machines turn it off (this suite's own did); without statistics the
    planner takes a table of 20,000 rows for one of a few hundred, and searches pick plans that walk
    a whole index per row. The suite stands in for autovacuum's analyze, and says so in the results.
    """

    def __init__(self, url, every=10.0):
        self.url, self.every = url, every
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.runs = 0

    def run(self):
        while not self.stop_event.wait(self.every):
            try:
                psql(self.url, "ANALYZE")
                self.runs += 1
            except subprocess.CalledProcessError as e:
                print(f"[postgres] ANALYZE: {e.stderr.strip()}", file=sys.stderr)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join()


def sqlite_size(path):
    return sum(os.path.getsize(path + s) for s in ("", "-wal", "-shm") if os.path.exists(path + s))


def bench_backend(name, exes, opts, workdir):
    server_exe, load_exe, _ = exes
    data = os.path.join(workdir, name)
    os.makedirs(data)
    env = dict(os.environ, TANDEM_LISTEN=f"127.0.0.1:{PORT}", TANDEM_DATA_DIR=data, TANDEM_LOG="warn",
               TANDEM_LOG_FORMAT="json")
    analyzer = contextlib.nullcontext()
    if name == "sqlite":
        db_path = os.path.join(data, "tandem.db")
        env["TANDEM_DATABASE_URL"] = f"sqlite://{db_path}"
    else:
        admin = opts.pg_url
        db = opts.pg_database
        psql(admin, f"DROP DATABASE IF EXISTS {db}")
        psql(admin, f"CREATE DATABASE {db}")
        db_url = admin.rsplit("/", 1)[0] + "/" + db
        env["TANDEM_DATABASE_URL"] = db_url
        if psql(db_url, "SHOW autovacuum") != "on":
            analyzer = Analyzer(db_url)
    log = open(os.path.join(workdir, f"{name}.log"), "w")
    server = Server(server_exe, env, log)
    result = {"backend": name}
    result["first_start_s"] = server.start()
    token = subprocess.run([server_exe, "token", "--scope", "system/*.cruds", "--lifetime", "86400"], env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    mint = lambda *scope: subprocess.run([server_exe, "token", *scope, "--lifetime", "86400"], env=env,
                                         check=True, capture_output=True, text=True).stdout.strip()
    args = {"port": PORT, "concurrency": opts.concurrency, "seconds": opts.seconds, "scale": opts.scale, "token": token,
            # A member of group 0, and the therapist of clients 0, P, 2P… (benches/load.rs).
            "member_token": mint("--scope", "patient/*.rs", "--patient", "bench-pa0"),
            "therapist_token": mint("--scope", "user/*.rs", "--fhir-user", "Practitioner/bench-pr0")}
    with analyzer:
        print(f"[{name}] seeding at scale {opts.scale}", file=sys.stderr, flush=True)
        seeded = load(load_exe, args, "--seed", "--only", "none")
        result["seed"] = seeded[0] if seeded else None
        # Idle on the filled database, after a restart: what a replica costs before it serves.
        server.stop()
        result["ready_s"] = server.start()
        time.sleep(2)
        result["idle_rss_kib"] = rss_kib(server.proc.pid)
        print(f"[{name}] scenarios", file=sys.stderr, flush=True)
        result["scenarios"] = load(load_exe, args)
    if isinstance(analyzer, Analyzer):
        result["note"] = (f"this PostgreSQL runs with autovacuum off; the suite ran ANALYZE every "
                          f"{analyzer.every:.0f} s in its place ({analyzer.runs} runs)")
    result["rss_kib"] = rss_kib(server.proc.pid)
    result["peak_rss_kib"] = rss_kib(server.proc.pid, "VmHWM")
    server.stop()
    # Ready on an existing database, three times, the best and the worst kept.
    readies = []
    for _ in range(3):
        readies.append(server.start())
        server.stop()
    result["ready_existing_s"] = readies
    log.close()
    if name == "sqlite":
        result["db_bytes"] = sqlite_size(db_path)
        counts_sql = "SELECT res_type, count(*), sum(length(body)) FROM resources WHERE deleted = 0 GROUP BY res_type"
        import sqlite3
        con = sqlite3.connect(db_path)
        try:
            result["types"] = [list(r) for r in con.execute(counts_sql)]
        except sqlite3.Error as e:
            result["types"] = []
            print(f"[{name}] per-type counts: {e}", file=sys.stderr)
        con.close()
    else:
        result["db_bytes"] = int(psql(db_url, "SELECT pg_database_size(current_database())"))
        rows = psql(db_url, "SELECT res_type, count(*), sum(octet_length(body::text)) FROM resources "
                            "WHERE deleted = false GROUP BY res_type")
        result["types"] = [r.split("|") for r in rows.splitlines() if r]
        psql(opts.pg_url, f"DROP DATABASE IF EXISTS {opts.pg_database}")
    return result


def bench_baseline(exes, opts, workdir):
    _, load_exe, baseline_exe = exes
    proc = subprocess.Popen([baseline_exe, "--listen", f"127.0.0.1:{BASELINE_PORT}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    STARTED.append(proc)
    try:
        wait_ready(f"http://127.0.0.1:{BASELINE_PORT}/", proc)
        idle = rss_kib(proc.pid)
        args = {"port": BASELINE_PORT, "concurrency": opts.concurrency, "seconds": opts.seconds, "scale": opts.scale}
        rows = load(load_exe, args, "--only", "read")
        return {"backend": "baseline", "scenarios": rows, "idle_rss_kib": idle}
    finally:
        proc.terminate()
        proc.wait()


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    pg = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} cores ({cpu}), {mem / 1048576:.0f} GiB RAM, Linux {platform.release()}, "
            f"{rustc}, {pg}; server, database and load generator on the same machine, over loopback")


def mib(kib):
    return f"{kib / 1024:.0f} MiB"


def report(results, opts, date, machine_text):
    baseline = next(r for r in results if r["backend"] == "baseline")
    base_rps = baseline["scenarios"][0]["per_second"]
    backends = [r for r in results if r["backend"] != "baseline"]
    lines = [
        f"# Benchmark results ({date})",
        "",
        f"Machine: {machine_text}.",
        "",
        f"Command: `python3 benches/run.py --scale {opts.scale} --seconds {opts.seconds} --concurrency {opts.concurrency}`.",
    ]
    seed = backends[0].get("seed") or {}
    sizes = ", ".join(f"{s['count']:,} {s['type']}" for s in seed.get("seed", []))
    lines += ["", f"Data set (loaded through FHIR REST in transaction Bundles of 500 PUTs): {sizes}.", ""]
    lines += [f"Baseline (a fixed FHIR JSON body from actix-web, the same worker count): "
              f"{base_rps:,.0f} req/s, p50 {baseline['scenarios'][0]['p50_ms']:.2f} ms, "
              f"p99 {baseline['scenarios'][0]['p99_ms']:.2f} ms.", ""]
    header = "| scenario | " + " | ".join(
        f"{b['backend']} req/s | p50 ms | p99 ms | errors" for b in backends) + " |"
    lines += [header, "| --- |" + " ---: | ---: | ---: | ---: |" * len(backends)]
    names = [s["name"] for s in backends[0]["scenarios"]]
    for i, name in enumerate(names):
        cells = []
        for b in backends:
            s = b["scenarios"][i]
            read = next((x for x in b["scenarios"] if x["scenario"] == "read"), None)
            ratio = (f" ({s['per_second'] / base_rps:.0%} of baseline)" if s["scenario"] == "read"
                     else f" ({s['per_second'] / read['per_second']:.0%} of the system read)"
                     if s["scenario"] in ("member-read", "therapist-encounters") and read else "")
            cells.append(f"{s['per_second']:,.0f}{ratio} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['errors']}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| | " + " | ".join(b["backend"] for b in backends) + " |", "| --- |" + " ---: |" * len(backends)]

    def row(label, f):
        lines.append(f"| {label} | " + " | ".join(f(b) for b in backends) + " |")

    row("seeding (resources/s, whole data set)", lambda b: f"{sum(s['count'] for s in b['seed']['seed']) / b['seed']['seconds']:,.0f}" if b.get("seed") else "—")
    row("idle RSS, after a restart on the filled database", lambda b: mib(b["idle_rss_kib"]))
    row("RSS after the scenarios (peak)", lambda b: f"{mib(b['rss_kib'])} ({mib(b['peak_rss_kib'])})")
    row("ready on an empty database (s)", lambda b: f"{b['first_start_s']:.3f}")
    row("ready on the filled database (s, three restarts)", lambda b: ", ".join(f"{s:.3f}" for s in b["ready_existing_s"]))
    row("database size", lambda b: f"{b['db_bytes'] / 1048576:,.0f} MiB")
    total = lambda b: sum(int(t[1]) for t in b["types"])
    row("database bytes per stored resource", lambda b: f"{b['db_bytes'] / max(total(b), 1):,.0f}")
    types = sorted({t[0] for b in backends for t in b["types"]})
    for t in types:
        def cell(b, t=t):
            hit = next((x for x in b["types"] if x[0] == t), None)
            return f"{int(hit[1]):,} × {int(hit[2]) / int(hit[1]):,.0f} B JSON" if hit else "—"
        row(f"{t} (count × mean stored JSON)", cell)
    lines += ["", f"Idle RSS of the baseline: {mib(baseline['idle_rss_kib'])}.", ""]
    lines += [f"Note ({b['backend']}): {b['note']}." for b in backends if b.get("note")]
    if any(b.get("note") for b in backends):
        lines.append("")
    return "\n".join(lines)


def comparison(before, results):
    """Markdown lines: each scenario's throughput and p99 in an earlier run (`before`, the JSON that
    run wrote) and in this one."""
    lines = ["## Before and after", "",
             f"Before: the results of {before['date']} ({before.get('label') or 'an earlier run'}), same command and machine kind. "
             "Each cell: req/s (p99 ms), before → after.", ""]
    backends = [r for r in results if r["backend"] != "baseline"]
    old = {r["backend"]: {s["scenario"]: s for s in r["scenarios"]} for r in before["results"]}
    lines += ["| scenario | " + " | ".join(b["backend"] for b in backends) + " |",
              "| --- |" + " --- |" * len(backends)]
    for i, s in enumerate(backends[0]["scenarios"]):
        cells = []
        for b in backends:
            now = b["scenarios"][i]
            was = old.get(b["backend"], {}).get(now["scenario"])
            if was is None:
                cells.append(f"— → {now['per_second']:,.0f} ({now['p99_ms']:,.0f})")
                continue
            change = (now["per_second"] / was["per_second"] - 1) if was["per_second"] else 0
            cells.append(f"{was['per_second']:,.0f} ({was['p99_ms']:,.0f}) → {now['per_second']:,.0f} "
                         f"({now['p99_ms']:,.0f}), {change:+.0%}")
        lines.append(f"| {s['name']} | " + " | ".join(cells) + " |")
    base = lambda rs: next(r for r in rs if r["backend"] == "baseline")["scenarios"][0]["per_second"]
    lines += ["", f"Baseline: {base(before['results']):,.0f} → {base(results):,.0f} req/s "
              "(the same fixed-body server: the difference is the machine's noise).", ""]
    return lines


def svg(results):
    """A grouped bar chart of throughput per scenario and backend, on a log scale."""
    import math
    backends = [r for r in results if r["backend"] != "baseline"]
    baseline = next(r for r in results if r["backend"] == "baseline")["scenarios"][0]["per_second"]
    names = [s["scenario"] for s in backends[0]["scenarios"]]
    colors = {"sqlite": "#4e79a7", "postgres": "#f28e2b"}
    w, h, left, bottom, top = 760, 360, 60, 60, 30
    top_value = max([baseline] + [s["per_second"] for b in backends for s in b["scenarios"]])
    decades = math.ceil(math.log10(max(top_value, 10)))
    y = lambda v: h - bottom - (h - bottom - top) * (math.log10(max(v, 1)) / decades)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="13">requests/s (log scale); dashed: fixed-body baseline</text>']
    for d in range(decades + 1):
        yy = y(10 ** d)
        out.append(f'<line x1="{left}" x2="{w - 10}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{10 ** d:,}</text>')
    slot = (w - left - 10) / len(names)
    bar = slot * 0.8 / len(backends)
    for i, n in enumerate(names):
        for j, b in enumerate(backends):
            v = b["scenarios"][i]["per_second"]
            x = left + i * slot + slot * 0.1 + j * bar
            out.append(f'<rect x="{x:.1f}" y="{y(v):.1f}" width="{bar:.1f}" height="{h - bottom - y(v):.1f}" fill="{colors.get(b["backend"], "#999")}"><title>{b["backend"]} {n}: {v:,.0f}/s</title></rect>')
        out.append(f'<text x="{left + (i + 0.5) * slot:.1f}" y="{h - bottom + 14}" text-anchor="middle">{n}</text>')
    yb = y(baseline)
    out.append(f'<line x1="{left}" x2="{w - 10}" y1="{yb:.1f}" y2="{yb:.1f}" stroke="#333" stroke-dasharray="5,4"/>')
    for j, b in enumerate(backends):
        out.append(f'<rect x="{left + j * 110}" y="{h - 24}" width="10" height="10" fill="{colors.get(b["backend"], "#999")}"/>'
                   f'<text x="{left + 14 + j * 110}" y="{h - 15}">{b["backend"]}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_report(opts, saved, before):
    """RESULTS.md and throughput.svg from a run's saved results (date and machine included)."""
    results = saved["results"]
    text = report(results, opts, saved["date"], saved["machine"])
    if before is not None:
        text = text.rstrip("\n") + "\n\n" + "\n".join(comparison(before, results))
    with open(os.path.join(opts.out, "RESULTS.md"), "w") as f:
        f.write(text)
    with open(os.path.join(opts.out, "throughput.svg"), "w") as f:
        f.write(svg(results))
    print(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="share of the full clinic (1.0: 1,000,000 appointments)")
    p.add_argument("--seconds", type=int, default=10, help="length of each scenario")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--pg-url", default=os.environ.get("TANDEM_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
                   help="a PostgreSQL database to connect to for creating the benchmark's own")
    p.add_argument("--pg-database", default="tandem_bench")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--compare", metavar="RESULTS_JSON",
                   help="an earlier run's results.json: the report adds a before-and-after table")
    p.add_argument("--compare-label", default="", help="what the earlier run was (a commit), for the report")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: write RESULTS.md and throughput.svg again from OUT/results.json")
    opts = p.parse_args()
    before = None
    if opts.compare:
        with open(opts.compare) as f:
            before = json.load(f)
        before["label"] = opts.compare_label
    if opts.report_only:
        with open(os.path.join(opts.out, "results.json")) as f:
            saved = json.load(f)
        for k in ("scale", "seconds", "concurrency"):
            setattr(opts, k, saved["options"][k])
        write_report(opts, saved, before)
        return
    exes = build()
    workdir = tempfile.mkdtemp(prefix="tandem-bench-")
    ok = False
    try:
        results = [bench_baseline(exes, opts, workdir)]
        for name in opts.backends.split(","):
            results.append(bench_backend(name, exes, opts, workdir))
        os.makedirs(opts.out, exist_ok=True)
        options = {k: v for k, v in vars(opts).items() if k not in ("compare", "compare_label", "report_only")}
        saved = {"date": datetime.date.today().isoformat(), "machine": machine(), "options": options, "results": results}
        with open(os.path.join(opts.out, "results.json"), "w") as f:
            json.dump(saved, f, indent=1)
        write_report(opts, saved, before)
        ok = True
    finally:
        for proc in STARTED:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"server logs and databases kept in {workdir}", file=sys.stderr)


if __name__ == "__main__":
    main()
