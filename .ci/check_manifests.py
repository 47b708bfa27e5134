#!/usr/bin/env python3
"""Validate the manifests `helm template` rendered for the tandem chart.

Every object of a built-in kind is validated with kubernetes-validate in strict mode (unknown
fields are errors) against each Kubernetes version given; an object whose schema the validator
does not have is an error, not a warning. The one custom resource the chart renders, the
Prometheus Operator's ServiceMonitor, is checked against a schema of the fields the chart uses
(closed: unknown fields are errors) and against the Service it must select. Then the chart's own
promises are checked across objects (security context, probes, secrets by reference only, the
migration hook's independence from the chart's other objects, selectors that match).

usage: check_manifests.py FILE --kube-version 1.30.0 [--kube-version …] --expect-kinds Kind,Kind…
"""

import argparse
import sys

import jsonschema
import kubernetes_validate
import yaml

SERVICE_MONITOR = ("monitoring.coreos.com/v1", "ServiceMonitor")

# The Prometheus Operator's duration pattern (monitoring.coreos.com/v1 Duration).
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
RELABELINGS = {"type": "array", "items": {"type": "object"}}

# The subset of the ServiceMonitor CRD (prometheus-operator v0.7x+) that the chart renders; field
# names and types follow the CRD. additionalProperties: false makes a typo an error.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": SERVICE_MONITOR[0]},
        "kind": {"const": SERVICE_MONITOR[1]},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                "namespace": {"type": "string", "minLength": 1},
                "labels": LABELS,
                "annotations": LABELS,
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": {**LABELS, "minProperties": 1}},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port", "path"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                            "relabelings": RELABELINGS,
                            "metricRelabelings": RELABELINGS,
                        },
                    },
                },
            },
        },
    },
}


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def ok(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print(f"  FAIL {what}")
        return cond


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def seconds(duration):
    """Seconds of a simple Prometheus duration such as 30s, 1m or 1m30s."""
    total, num = 0, ""
    units = {"s": 1, "m": 60, "h": 3600}
    for ch in duration:
        if ch.isdigit():
            num += ch
        else:
            total += int(num) * units[ch]
            num = ""
    return total


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def check_security(c, name, spec, container):
    psc = spec.get("securityContext", {})
    csc = container.get("securityContext", {})
    c.ok(psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot")
    c.ok(csc.get("runAsUser", psc.get("runAsUser")) == 10001, f"{name}: runAsUser 10001")
    c.ok(csc.get("runAsGroup", psc.get("runAsGroup")) == 10001, f"{name}: runAsGroup 10001")
    c.ok(psc.get("fsGroup") == 10001, f"{name}: fsGroup 10001")
    c.ok(csc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem")
    c.ok(csc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation false")
    c.ok("ALL" in csc.get("capabilities", {}).get("drop", []), f"{name}: capabilities drop ALL")
    seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {}))
    c.ok(seccomp.get("type") == "RuntimeDefault", f"{name}: seccompProfile RuntimeDefault")
    c.ok(spec.get("automountServiceAccountToken") is False, f"{name}: no service account token")
    c.ok("limits" in container.get("resources", {}) and "requests" in container.get("resources", {}),
         f"{name}: resource requests and limits")
    tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    c.ok(len(tmp) == 1 and "emptyDir" in vols.get(tmp[0]["name"], {}), f"{name}: emptyDir at /tmp")
    db = env_of(container).get("TANDEM_DATABASE_URL", {})
    c.ok("secretKeyRef" in db.get("valueFrom", {}), f"{name}: TANDEM_DATABASE_URL from a secretKeyRef")


def check(docs, expect_kinds):
    c = Checks()
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    c.ok(sorted(by_kind) == sorted(expect_kinds),
         f"rendered kinds {sorted(by_kind)} are the expected {sorted(expect_kinds)}")
    c.ok("Secret" not in by_kind, "the chart renders no Secret")
    for kind, objs in by_kind.items():
        c.ok(len(objs) == 1, f"one {kind} (got {len(objs)})")

    dep = by_kind["Deployment"][0]
    spec = pod_spec(dep)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    c.ok(matches(dep["spec"]["selector"]["matchLabels"], pod_labels), "Deployment selector matches its pods")
    containers = spec["containers"]
    c.ok(len(containers) == 1, "Deployment: one container")
    ctr = containers[0]
    check_security(c, "Deployment", spec, ctr)
    ports = {p["name"]: p for p in ctr.get("ports", [])}
    c.ok(ports.get("http", {}).get("containerPort") == 8080, "Deployment: container port 8080 named http")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = ctr.get(probe, {}).get("httpGet", {})
        c.ok(get.get("path") == path and get.get("port") == "http", f"Deployment: {probe} GET {path} on http")
    env = env_of(ctr)
    c.ok(env.get("TANDEM_MIGRATE_ON_START", {}).get("value") == "false", "Deployment: TANDEM_MIGRATE_ON_START=false")
    c.ok(env.get("TANDEM_LISTEN", {}).get("value") == "0.0.0.0:8080", "Deployment: TANDEM_LISTEN=0.0.0.0:8080")
    jwks = env.get("TANDEM_AUTH_JWKS_FILE", {}).get("value", "")
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    key_mounts = [m for m in ctr.get("volumeMounts", [])
                  if jwks.startswith(m["mountPath"].rstrip("/") + "/") and "secret" in vols.get(m["name"], {})]
    c.ok(len(key_mounts) == 1 and key_mounts[0].get("readOnly") is True,
         f"Deployment: TANDEM_AUTH_JWKS_FILE ({jwks}) is in a read-only mounted Secret")
    c.ok("checksum/config" in dep["spec"]["template"]["metadata"].get("annotations", {}),
         "Deployment: ConfigMap checksum annotation")
    c.ok(bool(spec.get("affinity", {}).get("podAntiAffinity")) or bool(spec.get("topologySpreadConstraints")),
         "Deployment: spread across nodes")

    cm = by_kind["ConfigMap"][0]
    c.ok(any(e.get("configMapRef", {}).get("name") == cm["metadata"]["name"] for e in ctr.get("envFrom", [])),
         "Deployment: env from the ConfigMap")
    data = cm.get("data") or {}
    c.ok(all(isinstance(v, str) for v in data.values()), "ConfigMap: every value is a string")
    c.ok(not any(k in data for k in ("TANDEM_DATABASE_URL", "TANDEM_LISTEN", "TANDEM_AUTH_JWKS_FILE")),
         "ConfigMap: no chart-owned or secret setting")
    c.ok(all("e+" not in v for v in data.values()), "ConfigMap: no number printed in float notation")
    grace = int(data.get("TANDEM_SHUTDOWN_GRACE_SECONDS", "30"))
    sleep_cmd = ctr.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop = int(sleep_cmd[-1]) if sleep_cmd and sleep_cmd[0].endswith("sleep") else 0
    c.ok(pre_stop > 0, "Deployment: preStop sleep")
    c.ok(spec.get("terminationGracePeriodSeconds", 30) > grace + pre_stop,
         f"Deployment: terminationGracePeriodSeconds {spec.get('terminationGracePeriodSeconds')} > {grace} + {pre_stop}")

    svc = by_kind["Service"][0]
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    c.ok(svc["spec"].get("type") == "ClusterIP", "Service: ClusterIP")
    c.ok(svc_ports.get("http", {}).get("targetPort") == "http", "Service: port http -> container port http")
    c.ok(matches(svc["spec"]["selector"], pod_labels), "Service selects the server pods")

    if "ServiceAccount" in by_kind:
        sa = by_kind["ServiceAccount"][0]
        c.ok(sa.get("automountServiceAccountToken") is False, "ServiceAccount: automountServiceAccountToken false")
        c.ok(spec.get("serviceAccountName") == sa["metadata"]["name"], "Deployment uses the ServiceAccount")

    if "HorizontalPodAutoscaler" in by_kind:
        hpa = by_kind["HorizontalPodAutoscaler"][0]
        ref = hpa["spec"]["scaleTargetRef"]
        c.ok(ref["kind"] == "Deployment" and ref["name"] == dep["metadata"]["name"], "HPA targets the Deployment")
        c.ok("replicas" not in dep["spec"], "Deployment leaves the replica count to the HPA")
        c.ok(any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"]["metrics"]), "HPA: CPU target")
    else:
        c.ok("replicas" in dep["spec"], "Deployment sets replicas without an HPA")

    if "PodDisruptionBudget" in by_kind:
        pdb = by_kind["PodDisruptionBudget"][0]
        c.ok(matches(pdb["spec"]["selector"]["matchLabels"], pod_labels), "PDB selects the server pods")
        c.ok(("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"]), "PDB: one of max/minAvailable")

    if "Job" in by_kind:
        job = by_kind["Job"][0]
        ann = job["metadata"].get("annotations", {})
        hooks = set(ann.get("helm.sh/hook", "").split(","))
        c.ok(hooks == {"pre-install", "pre-upgrade"}, "Job: pre-install,pre-upgrade hook")
        c.ok(set(ann.get("helm.sh/hook-delete-policy", "").split(",")) == {"before-hook-creation", "hook-succeeded"},
             "Job: hook-delete-policy before-hook-creation,hook-succeeded")
        c.ok(job["spec"].get("backoffLimit", 6) <= 3, "Job: small backoffLimit")
        jspec = pod_spec(job)
        jctr = jspec["containers"][0]
        check_security(c, "Job", jspec, jctr)
        c.ok((jctr.get("command", []) + jctr.get("args", []))[-1:] == ["migrate"], "Job: runs `tandem migrate`")
        c.ok(env_of(jctr).get("TANDEM_LOG_FORMAT", {}).get("value") == "json", "Job: JSON logs")
        job_labels = job["spec"]["template"]["metadata"]["labels"]
        c.ok(not matches(svc["spec"]["selector"], job_labels), "Job pod is not selected by the Service")
        # A pre-install hook runs before the chart's other objects exist: it may not use them.
        own = {(d["kind"], d["metadata"]["name"]) for d in docs if d is not job}
        text = yaml.safe_dump(jspec)
        c.ok("configMapRef" not in text and "configMapKeyRef" not in text and "configMap:" not in text,
             "Job: uses no ConfigMap")
        c.ok(("ServiceAccount", jspec.get("serviceAccountName")) not in own, "Job: uses no chart ServiceAccount")

    if "Ingress" in by_kind:
        ing = by_kind["Ingress"][0]
        backends = [p["backend"]["service"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
        c.ok(all(b["name"] == svc["metadata"]["name"] and b["port"].get("name") in svc_ports for b in backends),
             "Ingress routes to the Service's http port")

    if "NetworkPolicy" in by_kind:
        np_ = by_kind["NetworkPolicy"][0]
        sel = np_["spec"]["podSelector"]["matchLabels"]
        c.ok(matches(sel, pod_labels), "NetworkPolicy selects the server pods")
        if "Job" in by_kind:
            c.ok(matches(sel, by_kind["Job"][0]["spec"]["template"]["metadata"]["labels"]),
                 "NetworkPolicy selects the migration pod")
        c.ok(set(np_["spec"]["policyTypes"]) == {"Ingress", "Egress"}, "NetworkPolicy: Ingress and Egress")
        in_ports = [p.get("port") for r in np_["spec"].get("ingress", []) for p in r.get("ports", [])]
        c.ok(all(r.get("ports") for r in np_["spec"].get("ingress", [])) and set(in_ports) <= {"http"},
             "NetworkPolicy: ingress to port http only")
        eg_ports = {p.get("port") for r in np_["spec"].get("egress", []) for p in r.get("ports", [])}
        c.ok({53, 5432} <= eg_ports, "NetworkPolicy: egress to DNS and PostgreSQL")

    if "ServiceMonitor" in by_kind:
        sm = by_kind["ServiceMonitor"][0]
        errors = sorted(jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).iter_errors(sm), key=str)
        for e in errors:
            print(f"  ServiceMonitor: {'.'.join(map(str, e.absolute_path))}: {e.message}")
        c.ok(not errors, "ServiceMonitor matches the CRD subset schema (closed)")
        if not errors:
            c.ok(matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]),
                 "ServiceMonitor selects the Service")
            same_ns = sm["metadata"]["namespace"] == svc["metadata"]["namespace"]
            c.ok(same_ns or svc["metadata"]["namespace"] in sm["spec"].get("namespaceSelector", {}).get("matchNames", []),
                 "ServiceMonitor looks in the Service's namespace")
            for ep in sm["spec"]["endpoints"]:
                c.ok(ep["port"] in svc_ports and ep["path"] == "/metrics", "ServiceMonitor scrapes http /metrics")
                if "interval" in ep and "scrapeTimeout" in ep:
                    c.ok(seconds(ep["scrapeTimeout"]) <= seconds(ep["interval"]), "ServiceMonitor: timeout <= interval")
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--kube-version", action="append", required=True)
    ap.add_argument("--expect-kinds", required=True)
    args = ap.parse_args()

    with open(args.file) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    failed = 0
    print(f"{args.file}: {len(docs)} objects")
    for d in docs:
        what = f"{d['kind']}/{d['metadata']['name']}"
        if (d["apiVersion"], d["kind"]) == SERVICE_MONITOR:
            print(f"  {what}: custom resource, checked below against the ServiceMonitor subset schema")
            continue
        for version in args.kube_version:
            try:
                got = kubernetes_validate.validate(d, version, strict=True)
                print(f"  ok   {what} (strict, Kubernetes {got})")
            except kubernetes_validate.SchemaNotFoundError as e:
                failed += 1
                print(f"  FAIL {what}: {e.message}")
            except kubernetes_validate.ValidationError as e:
                failed += 1
                path = ".".join(map(str, e.path))
                print(f"  FAIL {what} (strict, Kubernetes {version}): {path}: {e.message}")
    c = check(docs, [k for k in args.expect_kinds.split(",") if k])
    total_failed = failed + c.failed
    print(f"  chart checks: {c.passed} passed, {c.failed} failed")
    print(f"{args.file}: {'OK' if total_failed == 0 else f'{total_failed} FAILURES'}")
    return 1 if total_failed else 0


if __name__ == "__main__":
    sys.exit(main())
