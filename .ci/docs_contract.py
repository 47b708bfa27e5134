#!/usr/bin/env python3
"""The OpenAPI document, checked from outside, against a running server (debug build).

Usage: .ci/docs_contract.py [--max-examples N] [--seed N]

1. openapi/openapi.json is valid OpenAPI 3.1 (openapi-spec-validator, the OpenAPI 3.1 schema).
2. Contract: Schemathesis generates requests from the document served at /openapi.json (less the
   primitive schemas' `examples`, see without_value_examples), sends them with a valid token, and checks every answer: no 5xx, only documented status codes and content
   types, bodies valid against the document's own schemas. Any failure fails the run.
3. Browser: headless Chromium (Debian's chromium, over the DevTools pipe: chromium.py) opens /docs
   behind a path prefix (/fhir, as a gateway would put it); the title must be ours, and every
   operation of the document must open (parameters, request body, responses with their example)
   within 2 s of its click (docs_timing.js). Times go to target/test-artifacts/docs-timing.json,
   the screenshot to target/test-artifacts/docs.png.

Tools come from .venv-docs (pinned in .ci/requirements-docs.txt); .ci/run installs chromium.
"""
import argparse, json, os, re, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.error, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv-docs")
BIN = os.path.join(ROOT, "target", "debug", "tandem")
ARTIFACTS = os.path.join(ROOT, "target", "test-artifacts")

parser = argparse.ArgumentParser()
parser.add_argument("--max-examples", type=int, default=5)
# A fixed seed keeps CI reproducible; run with another to explore further.
parser.add_argument("--seed", type=int, default=20261124)
args = parser.parse_args()


def venv():
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run(
        [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "-r",
         os.path.join(ROOT, ".ci", "requirements-docs.txt")],
        check=True,
    )
    return py


def validate(py):
    code = (
        "import json,sys\n"
        "from openapi_spec_validator import OpenAPIV31SpecValidator\n"
        "doc = json.load(open(sys.argv[1]))\n"
        "errors = list(OpenAPIV31SpecValidator(doc).iter_errors())\n"
        "for e in errors[:20]: print('invalid:', '/'.join(map(str, e.path)), e.message[:300])\n"
        "sys.exit(1 if errors else 0)\n"
    )
    subprocess.run([py, "-c", code, os.path.join(ROOT, "openapi", "openapi.json")], check=True)
    # Every schema example of a patterned value matches its pattern (the samples /docs shows).
    with open(os.path.join(ROOT, "openapi", "openapi.json")) as f:
        doc = json.load(f)
    checked, wrong = 0, []

    def walk(node, path):
        nonlocal checked
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str) and isinstance(node.get("examples"), list):
                for example in node["examples"]:
                    checked += 1
                    if not re.search(node["pattern"], example):
                        wrong.append(f"{path}: {example!r}")
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(doc, "#")
    if wrong or checked == 0:
        sys.exit(f"schema examples that break their pattern ({checked} checked): {wrong[:10]}")
    print(f"openapi/openapi.json: valid OpenAPI 3.1; {checked} schema examples match their patterns")


# Operations opened on one page load (see browser).
OPS_PER_PAGE = 80


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data):
    port = free_port()
    env = dict(
        os.environ,
        TANDEM_DATA_DIR=data,
        TANDEM_DATABASE_URL=f"sqlite://{data}/tandem.db",
        TANDEM_LISTEN=f"127.0.0.1:{port}",
        TANDEM_LOG="warn",
        TANDEM_LOG_FORMAT="json",
    )
    log = open(os.path.join(data, "server.log"), "w")
    server = subprocess.Popen([BIN, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/readyz", timeout=1)
            break
        except Exception:
            time.sleep(0.1)
    else:
        server.kill()
        sys.exit("the server did not become ready")
    token = subprocess.run(
        [BIN, "token", "--scope", "system/*.cruds system/AuditEvent.rs", "--lifetime", "7200"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()
    return server, base, token


def without_value_examples(node):
    """The document without the `examples` of patterned primitive schemas (a valid value per FHIR
    primitive, for renderers' samples). They are annotations: no answer is judged by them. But
    Schemathesis builds requests from every schema example it finds, and with one on each of the
    document's 199 patterned schemas its run of two operations went from 2 s to 110 s."""
    if isinstance(node, dict):
        return {k: without_value_examples(v) for k, v in node.items()
                if not (k == "examples" and isinstance(node.get("pattern"), str))}
    if isinstance(node, list):
        return [without_value_examples(v) for v in node]
    return node


def contract(py, base, token, workdir):
    st = os.path.join(VENV, "bin", "schemathesis")
    # The document the server serves, with only those annotations taken out.
    with urllib.request.urlopen(base + "/openapi.json", timeout=30) as r:
        doc = without_value_examples(json.load(r))
    served = os.path.join(workdir, "openapi-contract.json")
    with open(served, "w") as f:
        json.dump(doc, f)
    cmd = [
        st, "run", served, "--url", base,
        "--header", f"Authorization: Bearer {token}",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        # Examples only: with Encounter and DocumentReference hosted, the fuzzing phase ran past 9
        # minutes and 2 GB in CI even without POST / (alone, every operation but / fuzzed in 180 s
        # with only the not_a_server_error check), which the 20-minute CI cannot hold. Which check or
        # schema makes it explode is not yet isolated; until it is, the schema-derived examples of
        # every operation are sent and judged by all four checks.
        "--phases", "examples",
        "--max-examples", str(args.max_examples),
        "--seed", str(args.seed),
        "--workers", "2",
        "--request-timeout", "30",
        "--suppress-health-check", "all",
        "--continue-on-failure",
        # The transaction/batch endpoint (POST /) takes a Bundle whose entries may be any of the
        # hosted types: with Encounter and DocumentReference among them, generating its bodies ran
        # past 13 minutes and 2.8 GB (alone, 74 s; every other operation together, 180 s). Its
        # contract is held by the integration tests (tests/api/bundles.rs), not here.
        "--exclude-path-regex", "^/$",
        "--no-color",
    ]
    started = time.time()
    # Its cache (.schemathesis/) goes to the run's temporary directory, not into the work tree.
    result = subprocess.run(cmd, env=dict(os.environ, SCHEMATHESIS_HOOKS=""), cwd=workdir)
    print(f"schemathesis: exit {result.returncode} in {time.time() - started:.0f}s")
    if result.returncode != 0:
        sys.exit("the contract test found answers that break the OpenAPI document (see above)")


class PrefixProxy:
    """Serves the server's GET answers under /fhir, as a gateway with a path prefix would."""

    PREFIX = "/fhir"

    def __init__(self, upstream):
        import http.server
        import threading

        prefix = self.PREFIX

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def do_GET(self):
                if not (self.path == prefix or self.path.startswith(prefix + "/")):
                    self.send_error(404)
                    return
                req = urllib.request.Request(upstream + self.path[len(prefix):],
                                             headers={"Accept": self.headers.get("Accept", "*/*")})
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        status, headers, body = r.status, r.headers, r.read()
                except urllib.error.HTTPError as e:
                    status, headers, body = e.code, e.headers, e.read()
                self.send_response(status)
                for name in ("Content-Type", "Location"):
                    if headers.get(name):
                        self.send_header(name, headers[name])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}{prefix}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# What a reader waits for: from the click on an operation until its parameters, request body and
# first response (with its example) are on the page.
OPEN_LIMIT_MS = 2000


def operations(doc):
    """[tag, operationId, wants] for every operation of the document, as docs_timing.js takes them."""
    out = []
    for path_item in doc["paths"].values():
        shared_params = bool(path_item.get("parameters"))
        for op in path_item.values():
            if not isinstance(op, dict) or "operationId" not in op:
                continue
            wants = []
            if op.get("parameters") or shared_params:
                wants.append("params")
            if op.get("requestBody"):
                wants.append("body")
            first = next(iter(op.get("responses", {}).values()), {})
            if "$ref" in first:
                first = doc["components"]["responses"][first["$ref"].rsplit("/", 1)[1]]
            if first.get("content"):
                wants.append("example")
            out.append([op["tags"][0], op["operationId"], wants])
    return out


def in_runs(ops, size=OPS_PER_PAGE):
    """The operations in runs of `size`, in their order: one page load each."""
    return [ops[i:i + size] for i in range(0, len(ops), size)]


def browser(base):
    """/docs in headless Chromium, behind a path prefix: the page renders, and every operation opens
    within OPEN_LIMIT_MS."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from chromium import Chromium

    os.makedirs(ARTIFACTS, exist_ok=True)
    with urllib.request.urlopen(base + "/openapi.json", timeout=30) as r:
        doc = json.load(r)
    ops = operations(doc)
    timing = open(os.path.join(ROOT, ".ci", "docs_timing.js")).read()
    proxy = PrefixProxy(base)
    chrome = Chromium()
    try:
        started = time.time()
        # No trailing slash: the page's relative paths must still find its files and the document.
        chrome.open(proxy.base + "/docs")
        title = chrome.evaluate("document.title")
        if title != "tandem FHIR R4 API":
            sys.exit(f"/docs title is {title!r}")
        # A fresh page every OPS_PER_PAGE operations: on one page Swagger UI grows slower with every
        # operation opened and closed (the first 30 of 309 opened in a median of 135 ms, the last
        # 30 in 1,127 ms; 219 s in all), which timed Swagger UI's own state, not how long an
        # operation takes a reader to open; a page per tag cost more in loads (259 s).
        results = []
        for i, run in enumerate(in_runs(ops)):
            if i > 0:
                chrome.open(proxy.base + "/docs")
            results += chrome.evaluate(f"({timing})({json.dumps(run)}, {OPEN_LIMIT_MS})", timeout=900)
        chrome.screenshot(os.path.join(ARTIFACTS, "docs.png"))
    finally:
        chrome.close()
        proxy.close()
    with open(os.path.join(ARTIFACTS, "docs-timing.json"), "w") as f:
        json.dump(results, f, indent=1)
    slow = [r for r in results if not r["rendered"] or r["ms"] > OPEN_LIMIT_MS]
    ms = sorted(r["ms"] for r in results)
    print(f"/docs behind {PrefixProxy.PREFIX}: opened {len(results)} operations in {time.time() - started:.0f} s; "
          f"median {ms[len(ms) // 2]} ms, slowest {ms[-1]} ms "
          f"({max(results, key=lambda r: r['ms'])['id']}); times in {ARTIFACTS}/docs-timing.json")
    if len(results) != len(ops) or len(ops) < 100:
        sys.exit(f"/docs: {len(results)} of {len(ops)} operations timed")
    if slow:
        sys.exit(f"/docs: operations that did not open within {OPEN_LIMIT_MS} ms: {slow}")


def main():
    py = venv()
    validate(py)
    data = tempfile.mkdtemp(prefix="tandem-contract-")
    server, base, token = start_server(data)
    try:
        browser(base)
        contract(py, base, token, data)
        # A 5xx is also in the server's own log; anything logged at error level fails the run, but
        # actix's note of a request it could not parse (a malformed header Schemathesis sent on
        # purpose, answered 400 before routing).
        with open(os.path.join(data, "server.log")) as f:
            errors = [
                line for line in f
                if '"level":"ERROR"' in line and "request parse error" not in line
            ]
        if errors:
            sys.exit("the server logged errors during the contract test:\n" + "".join(errors[:10]))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
