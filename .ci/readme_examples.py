#!/usr/bin/env python3
"""Runs the README's shell examples, as printed, against a server started the README's way.

Usage: .ci/readme_examples.py [--debug]
  --debug  use the debug build (`cargo run -q` instead of `cargo run -q --release`), for CI,
           which builds only the debug profile.

The server starts on a fresh ./data (moved aside and restored afterwards). Each ```sh block of the
sections that talk to a running server is run in one bash session, in order, so variables carry
over; a command that fails (curl -f is not used: HTTP errors are part of the examples) is reported
by bash's exit status. Every curl answer's status is printed, and the run fails when any answer is a
5xx or a connection error. The worked example then runs a second time, and both runs must answer
as the README says: its $book-session 201, the overlapping POST /Appointment 409; the scheduling
section's refusals and bookings answer as it says too.
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
    # Wrap curl so that every answer's status is checked (no 5xx, no connection failure) and
    # logged. The status comes from a marker appended to the example's own -w, or from a -w of the
    # wrapper's when the example has none, so that what the example prints is what it prints.
    prelude = r'''
set -e
curl() {
  local out status args=() own_w=
  while [ $# -gt 0 ]; do
    case "$1" in
      -w|--write-out) args+=("$1" "$2"'__STATUS__%{http_code}'); own_w=1; shift 2 ;;
      *) args+=("$1"); shift ;;
    esac
  done
  [ -n "$own_w" ] || args+=(-w '__STATUS__%{http_code}')
  out=$(command curl -sS "${args[@]}") || { echo "curl failed: ${args[*]}" >&2; return 1; }
  status=${out##*__STATUS__}
  printf '%s\n' "${out%__STATUS__*}"
  echo "  -> HTTP $status" >&2
  printf '%s %s\n' "$status" "${args[*]}" | tr '\n' ' ' >> "$STATUS_LOG"; echo >> "$STATUS_LOG"
  if [ "$status" -ge 500 ] || [ "$status" = 000 ]; then echo "server error $status for: ${args[*]}" >&2; return 1; fi
}
'''
    # The worked example runs a second time, as the README says one may: its $book-session books
    # again (201) and the overlapping POST /Appointment is still 409.
    worked = next(b for b in runnable if "$book-session" in b)
    log = tempfile.NamedTemporaryFile(prefix="tandem-readme-", suffix=".log", delete=False).name
    script2 = script + "\necho __SECOND_RUN__ >> \"$STATUS_LOG\"\n" + (
        worked.replace("cargo run -q --release", "cargo run -q") if debug else worked)
    result = subprocess.run(["bash", "-c", prelude + script2], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, STATUS_LOG=log))
    sys.stdout.write(result.stdout[-4000:])
    sys.stderr.write(result.stderr[-8000:])
    if result.returncode != 0:
        sys.exit(f"README examples failed (exit {result.returncode})")
    lines = open(log).read().splitlines()
    os.unlink(log)
    if "__SECOND_RUN__" not in lines:
        sys.exit("the worked example's second run did not start")
    cut = lines.index("__SECOND_RUN__")
    for run, part in (("first", lines[:cut]), ("second", lines[cut + 1:])):
        book = [l.split()[0] for l in part if "$book-session" in l and "2026-12-01T18:00:00Z" in l]
        overlap = [l.split()[0] for l in part
                   if "-X POST" in l and "/Appointment -H" in l and "2026-12-01T19:00:00Z" in l]
        if book != ["201"] or overlap != ["409"]:
            sys.exit(f"worked example, {run} run: $book-session answered {book} (README: 201), "
                     f"the overlapping POST /Appointment {overlap} (README: 409)")
    # The scheduling section (first run only): what each refusal and booking answers, as printed.
    first = lines[:cut]
    for what, needle, expected in (
        ("an individual session in reserved time", ("-X POST", "2027-01-12T18:00:00Z"), ["409"]),
        ("the 12-week series", ("$book-session", "2027-01-05T18:00:00Z"), ["201"]),
        ("the clashing series", ("$book-session", "2027-01-05T19:00:00Z"), ["409"]),
        ("$find", ("$find",), ["200", "200"]),
        ("$cancel-series", ("$cancel-series",), ["200"]),
    ):
        got = [l.split()[0] for l in first if all(n in l for n in needle)]
        if got != expected:
            sys.exit(f"scheduling example: {what} answered {got} (README: {expected})")
    unanswered = [l for l in lines if l != "__SECOND_RUN__" and not re.match(r"^[1-5][0-9][0-9] ", l)]
    if unanswered:
        sys.exit(f"curl calls without a status: {unanswered[:5]}")
    print(f"README examples: {len(runnable)} blocks ran")
finally:
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    shutil.rmtree(data, ignore_errors=True)
    if saved:
        shutil.move(os.path.join(saved, "data"), data)
