#!/usr/bin/env python3
"""How many audit events a crash loses: python3 benches/audit_crash.py [--pg-url URL] [--seconds 3]

Starts the release build of `tandem serve` (SQLite in a temporary directory, or a fresh PostgreSQL
database on --pg-url's server), reads Patient/bench with --clients threads for --seconds, then kills
the server with SIGKILL (kill -9) mid-load. Every read answered 200 carries its X-Request-Id; the
events in the trail's store are then counted against them. Prints the answered reads, the events
lost, and the loss as events per second of load and as the window of time they make. Standard
library only (SQLite through sqlite3; PostgreSQL through psql).
"""
import argparse, json, os, signal, sqlite3, subprocess, sys, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "tandem")

p = argparse.ArgumentParser()
p.add_argument("--seconds", type=float, default=3.0)
p.add_argument("--clients", type=int, default=16)
p.add_argument("--pg-url", default=None, help="postgres://…/postgres: a database tandem_crash is made on it")
args = p.parse_args()

work = tempfile.mkdtemp(prefix="tandem-crash-")
if args.pg_url:
    base = args.pg_url.rsplit("/", 1)[0]
    subprocess.run(["psql", args.pg_url, "-qc", "DROP DATABASE IF EXISTS tandem_crash"], check=True)
    subprocess.run(["psql", args.pg_url, "-qc", "CREATE DATABASE tandem_crash"], check=True)
    db_url = f"{base}/tandem_crash"
else:
    db_url = f"sqlite://{work}/tandem.db"
env = dict(os.environ, TANDEM_DATABASE_URL=db_url, TANDEM_DATA_DIR=work, TANDEM_LISTEN="127.0.0.1:8095", TANDEM_LOG="warn")
token = subprocess.run([BIN, "token", "--scope", "system/*.cruds"], env=env, capture_output=True, text=True, check=True).stdout.strip()
server = subprocess.Popen([BIN, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
base_url = "http://127.0.0.1:8095"
for _ in range(200):
    try:
        urllib.request.urlopen(base_url + "/healthz", timeout=1)
        break
    except Exception:
        time.sleep(0.05)
headers = {"Authorization": "Bearer " + token, "Content-Type": "application/fhir+json"}
req = urllib.request.Request(base_url + "/Patient/bench", method="PUT", headers=headers,
                             data=json.dumps({"resourceType": "Patient", "id": "bench"}).encode())
urllib.request.urlopen(req).read()

answered, lock, stop = [], threading.Lock(), threading.Event()


def reader():
    while not stop.is_set():
        try:
            with urllib.request.urlopen(urllib.request.Request(base_url + "/Patient/bench", headers=headers), timeout=5) as r:
                r.read()
                if r.status == 200:
                    with lock:
                        answered.append((time.monotonic(), r.headers["X-Request-Id"]))
        except Exception:
            return


threads = [threading.Thread(target=reader) for _ in range(args.clients)]
started = time.monotonic()
for t in threads:
    t.start()
time.sleep(args.seconds)
server.send_signal(signal.SIGKILL)
killed = time.monotonic()
server.wait()
stop.set()
for t in threads:
    t.join()

if args.pg_url:
    out = subprocess.run(["psql", db_url, "-Atc", "SELECT body FROM audit_events"], capture_output=True, text=True, check=True).stdout
    bodies = out.splitlines()
else:
    audit = sqlite3.connect(f"{work}/tandem-audit.db")
    bodies = [b for (b,) in audit.execute("SELECT body FROM audit_events")]
trail = {json.loads(b).get("request_id") for b in bodies}
lost = [(t, i) for t, i in answered if i not in trail]
load = len(answered) / max(killed - started, 1e-9)
print(json.dumps({
    "backend": "postgresql" if args.pg_url else "sqlite",
    "answered_reads": len(answered),
    "reads_per_second": round(load),
    "events_lost": len(lost),
    "lost_per_second_of_load": round(len(lost) / max(killed - started, 1e-9), 1),
    # From the earliest answer whose event was lost to the kill (answers timed after the kill, by
    # a thread that read its response late, count as 0).
    "window_ms": round(max(0.0, 1000 * (killed - min(t for t, _ in lost))), 1) if lost else 0.0,
}))
