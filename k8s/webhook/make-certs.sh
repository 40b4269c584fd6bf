#!/usr/bin/env bash
# Makes the webhook's serving certificate with openssl, for clusters without cert-manager:
# a private CA (kept and reused on later runs, so rotating the serving certificate does not
# change the caBundle) and a serving certificate for the webhook Service's DNS names.
#
#   k8s/webhook/make-certs.sh                 # write the files to ./webhook-certs, print next steps
#   k8s/webhook/make-certs.sh --apply         # also create the TLS Secret and patch the caBundle
#
# Options:
#   --namespace NS    the webhook's namespace            (default portcullis-system)
#   --service NAME    the webhook's Service name         (default portcullis-inject)
#   --webhook NAME    the MutatingWebhookConfiguration   (default portcullis-inject)
#   --out DIR         where the files go                 (default ./webhook-certs)
#   --days N          validity of the serving cert       (default 365; the CA gets 5 years)
#   --apply           run kubectl: Secret portcullis-inject-tls, caBundle of every webhook entry
#
# Keep DIR private: it holds the CA's private key. Re-run before the serving cert expires; the
# running webhook reloads the renewed Secret by itself.
set -euo pipefail

namespace=portcullis-system
service=portcullis-inject
webhook=portcullis-inject
out=./webhook-certs
days=365
apply=false

while [ $# -gt 0 ]; do
  case "$1" in
    --namespace) namespace="$2"; shift 2 ;;
    --service) service="$2"; shift 2 ;;
    --webhook) webhook="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --days) days="$2"; shift 2 ;;
    --apply) apply=true; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "make-certs.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

command -v openssl >/dev/null || { echo "make-certs.sh: openssl is required" >&2; exit 1; }
mkdir -p "$out"
chmod 700 "$out"
umask 077

dns="${service}.${namespace}.svc"

# 1. The CA, created once and reused.
if [ ! -s "$out/ca.key" ] || [ ! -s "$out/ca.crt" ]; then
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$out/ca.key" -out "$out/ca.crt" -days 1825 -subj "/CN=${service}-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "created CA $out/ca.crt"
else
  echo "reusing CA $out/ca.crt"
fi

# 2. A fresh serving key and certificate for the Service's names.
cat > "$out/serving.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:${dns},DNS:${dns}.cluster.local
EXT
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
  -keyout "$out/tls.key" -out "$out/tls.csr" -subj "/CN=${dns}" 2>/dev/null
openssl x509 -req -in "$out/tls.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
  -set_serial "0x$(openssl rand -hex 16)" -days "$days" -extfile "$out/serving.ext" \
  -out "$out/tls.crt" 2>/dev/null
rm -f "$out/tls.csr" "$out/serving.ext"
openssl verify -CAfile "$out/ca.crt" "$out/tls.crt" >/dev/null
echo "created serving certificate $out/tls.crt for ${dns}"

if [ "$apply" != true ]; then
  cat <<NEXT

Next: re-run with --apply, or by hand:
  kubectl -n ${namespace} create secret tls portcullis-inject-tls \\
    --cert=${out}/tls.crt --key=${out}/tls.key --dry-run=client -o yaml | kubectl apply -f -
  and set clientConfig.caBundle of every entry of ${webhook} to: base64 < ${out}/ca.crt | tr -d '\\n'
NEXT
  exit 0
fi

# 3. The Secret the webhook mounts, and the CA in every entry of the webhook configuration.
ca_bundle="$(base64 < "$out/ca.crt" | tr -d '\n')"
kubectl -n "$namespace" create secret tls portcullis-inject-tls \
  --cert="$out/tls.crt" --key="$out/tls.key" --dry-run=client -o yaml | kubectl apply -f -

entries="$(kubectl get mutatingwebhookconfiguration "$webhook" -o jsonpath='{range .webhooks[*]}{.name}{"\n"}{end}' | grep -c .)"
patch="["
for ((i = 0; i < entries; i++)); do
  [ "$i" -gt 0 ] && patch+=","
  patch+="{\"op\":\"add\",\"path\":\"/webhooks/${i}/clientConfig/caBundle\",\"value\":\"${ca_bundle}\"}"
done
patch+="]"
kubectl patch mutatingwebhookconfiguration "$webhook" --type=json -p "$patch"
echo "patched the caBundle of ${entries} webhook entries in ${webhook}"
