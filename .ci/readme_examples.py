#!/usr/bin/env python3
"""Runs the README's shell examples, as printed, against a server started the README's way.

Usage: .ci/readme_examples.py [--debug]
  --debug  use the debug build (`cargo run -q` instead of `cargo run -q --release`), for CI,
           which builds only the debug profile.

The server starts on a fresh ./data (moved aside and restored afterwards). Each ```sh block of the
sections that talk to a running server is run in one bash session, in order, so variables carry
over; a command that fails (curl -f is not used: HTTP errors are part of the examples) is reported
by bash's exit status. Every curl answer's status is printed, and the run fails when any answer is a
5xx or a connection error, or when an example that the README says succeeds does not.
"""
import os, re, shutil, signal, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
debug = "--debug" in sys.argv
readme = open(os.path.join(ROOT, "README.md")).read()
blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
skip = ("cargo test", "cargo bench", "benches/run.py", "> openapi/openapi.json")
runnable = [b for b in blocks if b.strip() != "cargo run --release" and not any(s in b for s in skip)]
script = "\n".join(runnable)
if debug:
    script = script.replace("cargo run -q --release", "cargo run -q")

data = os.path.join(ROOT, "data")
saved = None
if os.path.exists(data):
    saved = tempfile.mkdtemp(prefix="tandem-data-")
    shutil.move(data, saved)
server_cmd = ["cargo", "run", "-q"] + ([] if debug else ["--release"])
# Build first, without a time limit: `cargo run` after `cargo test` rebuilds the binary with the
# features of the normal dependencies only (the dev-dependencies no longer unify), which can take
# longer than the wait for the server below.
subprocess.run(["cargo", "build", "-q", "--bins"] + ([] if debug else ["--release"]), cwd=ROOT, check=True)
env = dict(os.environ, TANDEM_LOG="warn")
server = subprocess.Popen(server_cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
try:
    for _ in range(600):
        try:
            urllib.request.urlopen("http://127.0.0.1:8080/healthz", timeout=1)
            break
        except Exception:
            time.sleep(0.2)
    else:
        sys.exit("the server did not start")
    # Wrap curl so that every answer's status is checked: no 5xx, no connection failure.
    prelude = r'''
set -e
curl() {
  local out status
  out=$(command curl -sS -w '\n__STATUS__%{http_code}' "$@") || { echo "curl failed: $*" >&2; return 1; }
  status=${out##*__STATUS__}
  printf '%s\n' "${out%__STATUS__*}"
  echo "  -> HTTP $status" >&2
  if [ "$status" -ge 500 ] || [ "$status" = 000 ]; then echo "server error $status for: $*" >&2; return 1; fi
}
'''
    result = subprocess.run(["bash", "-c", prelude + script], cwd=ROOT, capture_output=True, text=True)
    sys.stdout.write(result.stdout[-4000:])
    sys.stderr.write(result.stderr[-8000:])
    if result.returncode != 0:
        sys.exit(f"README examples failed (exit {result.returncode})")
    print(f"README examples: {len(runnable)} blocks ran")
finally:
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    shutil.rmtree(data, ignore_errors=True)
    if saved:
        shutil.move(os.path.join(saved, "data"), data)
