#!/usr/bin/env bash
# bench/run.sh: portcullis next to nginx and HAProxy, on 127.0.0.1, measured in one run.
#
# See bench/README.md. In short: it installs what is missing (Debian packages), writes the
# configurations into a fresh run directory, starts an nginx upstream, nginx and HAProxy as
# plain proxies, HAProxy with its HS256 jwt_verify check, and portcullis; proves with curl that
# every JWT-checking target lets a valid token through (and the upstream sees its subject) and
# turns every bad token away with 401; then loads every target in turn, round after round, with
# wrk (closed loop) and h2load (fixed rate), recording the proxy's CPU time per request and its
# memory; and prints one markdown table in which every figure is also a ratio to HAProxy+JWT.
# It only ever signals the PIDs it started itself.
#
# Knobs (environment variables, defaults in brackets):
#   REPS [3]          rounds; each round loads every target once per mode, in a rotated order
#   DURATION [8]      seconds per load run
#   WARMUP [2]        seconds of unmeasured load per target before the first round
#   CONNS [32]        wrk connections (one wrk thread)
#   RATE [2000]       fixed-rate pass, requests/s on one keep-alive connection (0 = skip it)
#   PINNING [shared]  shared: load generator + servers all on the last CPU; split: load
#                     generator on CPU 0, servers on the last CPU; off: no pinning
#   BASE_PORT [19180] ports BASE..BASE+5 on 127.0.0.1
#   MAX_STEAL [20]    a run that lost more than this % of the pinned CPU to hypervisor steal is
#   STEAL_RETRIES [1]       set aside and run again, at most STEAL_RETRIES times
#   BUSY_MAX [10]    before each round wait until the machine is at most this % busy ...
#   BUSY_WAIT [20]   ... but no longer than this many seconds (then the run is flagged noisy)
#   STOP_GRACE [3]    seconds between SIGTERM and SIGKILL when stopping the servers
#   PORTCULLIS_BIN [<repo>/target/release/portcullis]   binary under test
#   PORTCULLIS_ARGS   extra arguments for `portcullis run` (split on whitespace)
#   PORTCULLIS_WAIT [20]  seconds to wait for its /readyz to answer 200
#   SKIP_PORTCULLIS [0]   1: measure only the competitors (also automatic if the binary is missing)
#   BIG_HAPROXY [0]   1: also load HAProxy+JWT with the ~2,400-character token
#   OUT [/tmp/portcullis-bench/run-<UTC timestamp>]   run directory
set -Eeuo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"

REPS=${REPS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}
RATE=${RATE:-2000}
PINNING=${PINNING:-shared}
BASE_PORT=${BASE_PORT:-19180}
MAX_STEAL=${MAX_STEAL:-20}
STEAL_RETRIES=${STEAL_RETRIES:-1}
BUSY_MAX=${BUSY_MAX:-10}
BUSY_WAIT=${BUSY_WAIT:-20}
STOP_GRACE=${STOP_GRACE:-3}
PORTCULLIS_BIN=${PORTCULLIS_BIN:-$REPO_DIR/target/release/portcullis}
PORTCULLIS_ARGS=${PORTCULLIS_ARGS:-}
PORTCULLIS_WAIT=${PORTCULLIS_WAIT:-20}
SKIP_PORTCULLIS=${SKIP_PORTCULLIS:-0}
BIG_HAPROXY=${BIG_HAPROXY:-0}
OUT=${OUT:-/tmp/portcullis-bench/run-$(date -u +%Y%m%dT%H%M%SZ)}

ISS=https://issuer.bench.test
AUD=bench-workload
KID=bench-key-1
SUBJECT=0b6d3f6e-9c1a-4f7e-8a52-3d2b1c0e9f47
LOOP=127.0.0.1

for v in REPS DURATION WARMUP CONNS RATE BASE_PORT MAX_STEAL STEAL_RETRIES BUSY_MAX BUSY_WAIT STOP_GRACE PORTCULLIS_WAIT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "run.sh: $v must be a whole number (got '${!v}')" >&2; exit 2; }
done
((REPS >= 1 && DURATION >= 1 && CONNS >= 1)) || { echo "run.sh: REPS, DURATION and CONNS must be >= 1" >&2; exit 2; }
case $PINNING in shared | split | off) ;; *) echo "run.sh: PINNING must be shared, split or off" >&2; exit 2 ;; esac

P_UPSTREAM=$BASE_PORT
P_NGINX=$((BASE_PORT + 1))
P_HAPROXY=$((BASE_PORT + 2))
P_HAPROXY_JWT=$((BASE_PORT + 3))
P_PORTCULLIS=$((BASE_PORT + 4))
P_ADMIN=$((BASE_PORT + 5))

note() { printf '%s bench: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
fail() { note "ABORT: $*"; exit 1; }

[[ $(id -u) == 0 ]] || fail "run as root (it installs Debian packages and pins processes)"

# ------------------------------------------------------------------------------------------
# Processes we start. Only these PIDs are ever signalled, and only while /proc still shows the
# same start time (so a recycled PID is never hit).
# ------------------------------------------------------------------------------------------
declare -a OWN=()             # "name pid starttime", in start order
declare -A PIDS_OF=()         # server name -> its PIDs (main process first, then its children)
declare -A START_OF=()        # server name -> start time of its main process

starttime() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; set -- $s; echo "${20}"; }
alive() { # alive <pid> <starttime>: running, not a zombie, and still the process we started
  local want=$2 s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; set -- $s
  [[ $1 != Z && ${20} == "$want" ]]
}

stop_all() {
  local e n p t left i
  ((${#OWN[@]})) || return 0
  note "stopping ${#OWN[@]} processes we started (SIGTERM, SIGKILL after ${STOP_GRACE}s)"
  for e in "${OWN[@]}"; do read -r n p t <<<"$e"; alive "$p" "$t" && kill -TERM "$p" 2>/dev/null || true; done
  for ((i = 0; i < STOP_GRACE * 10; i++)); do
    left=0
    for e in "${OWN[@]}"; do read -r n p t <<<"$e"; alive "$p" "$t" && left=1; done
    ((left)) || break
    sleep 0.1
  done
  for e in "${OWN[@]}"; do
    read -r n p t <<<"$e"
    if alive "$p" "$t"; then note "  $n (pid $p) still up after SIGTERM: SIGKILL"; kill -KILL "$p" 2>/dev/null || true; fi
  done
  local codes="" rc
  for e in "${OWN[@]}"; do
    read -r n p t <<<"$e"
    [[ $n == *-child ]] && continue   # not our child: nothing to reap
    rc=0; wait "$p" 2>/dev/null || rc=$?
    codes+=" $n=$rc"
  done
  note "exit statuses (0 = clean exit, 143 = killed by SIGTERM, 137 = needed SIGKILL):$codes"
  echo "exit statuses:$codes" >>"$OUT/logs/stop.log"
  OWN=()
}

on_exit() {
  local rc=$?
  trap - EXIT INT TERM ERR
  set +e
  if [[ -n ${LG_PID:-} ]]; then kill -TERM "$LG_PID" 2>/dev/null; wait "$LG_PID" 2>/dev/null; fi  # timeout passes it on to the load generator
  stop_all
  [[ -n ${POLICY_MADE:-} ]] && rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || note "exit status $rc; whatever was written so far is in $OUT"
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'note "command failed (line $LINENO): $BASH_COMMAND"' ERR

# ------------------------------------------------------------------------------------------
# Packages
# ------------------------------------------------------------------------------------------
install_missing() {
  local -a pkgs=()
  local cmd pkg
  for cmd in nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client curl:curl ps:procps \
             ss:iproute2 taskset:util-linux timeout:coreutils python3:python3 lscpu:util-linux; do
    command -v "${cmd%%:*}" >/dev/null 2>&1 || pkgs+=("${cmd#*:}")
  done
  ((${#pkgs[@]})) || return 0
  mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
  note "installing from Debian: ${pkgs[*]}"
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    # Keep the packages' own nginx/haproxy services from starting on port 80 etc.
    printf '#!/bin/sh\n# temporary, from portcullis bench/run.sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    POLICY_MADE=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"$OUT/logs/apt.log" 2>&1; then
    note "apt-get install failed; running apt-get update once and retrying"
    apt-get update -q >>"$OUT/logs/apt.log" 2>&1 || fail "apt-get update failed (see $OUT/logs/apt.log)"
    apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"$OUT/logs/apt.log" 2>&1 ||
      fail "apt-get install ${pkgs[*]} failed (see $OUT/logs/apt.log)"
  fi
  if [[ -n ${POLICY_MADE:-} ]]; then rm -f /usr/sbin/policy-rc.d; POLICY_MADE=; fi
}

if [[ -e $OUT ]] && [[ -n $(ls -A "$OUT" 2>/dev/null) ]]; then echo "run.sh: $OUT already exists and is not empty; choose another OUT" >&2; exit 2; fi
mkdir -p "$OUT"/{conf,logs,raw,tokens,tmp}
cd "$OUT"  # nothing below writes into the repository
install_missing
for cmd in nginx haproxy wrk h2load curl ss taskset python3; do
  command -v "$cmd" >/dev/null || fail "$cmd is still missing after the install step"
done
[[ $(haproxy -vv 2>&1) == *OPENSSL* ]] || note "warning: this haproxy may lack OpenSSL (jwt_verify needs it)"

# ------------------------------------------------------------------------------------------
# Targets
# ------------------------------------------------------------------------------------------
WITH_PORTCULLIS=1
if [[ $SKIP_PORTCULLIS == 1 ]]; then
  WITH_PORTCULLIS=0; note "SKIP_PORTCULLIS=1: measuring the competitors only"
elif [[ ! -x $PORTCULLIS_BIN ]]; then
  WITH_PORTCULLIS=0
  note "******** $PORTCULLIS_BIN is missing or not executable: portcullis is NOT measured in this run"
  note "******** (build it with 'cargo build --release', or set PORTCULLIS_BIN=/path/to/portcullis)"
fi

# name | server process | port | token | JWT checks? | description
TARGETS=(direct nginx haproxy haproxy_jwt)
declare -A T_SERVER=([direct]=upstream [nginx]=nginx [haproxy]=haproxy [haproxy_jwt]=haproxy_jwt)
declare -A T_PORT=([direct]=$P_UPSTREAM [nginx]=$P_NGINX [haproxy]=$P_HAPROXY [haproxy_jwt]=$P_HAPROXY_JWT)
declare -A T_TOKEN=([direct]=small [nginx]=small [haproxy]=small [haproxy_jwt]=small)
declare -A T_DESC=(
  [direct]="upstream alone (nginx, return 200)"
  [nginx]="nginx plain reverse proxy"
  [haproxy]="HAProxy plain proxy"
  [haproxy_jwt]="HAProxy + jwt_verify HS256 (sig, exp, iss, aud)"
)
if ((BIG_HAPROXY)); then
  TARGETS+=(haproxy_jwt_big)
  T_SERVER[haproxy_jwt_big]=haproxy_jwt; T_PORT[haproxy_jwt_big]=$P_HAPROXY_JWT; T_TOKEN[haproxy_jwt_big]=big
  T_DESC[haproxy_jwt_big]="HAProxy + jwt_verify, 2,400-char token"
fi
if ((WITH_PORTCULLIS)); then
  TARGETS+=(portcullis portcullis_big)
  T_SERVER[portcullis]=portcullis; T_PORT[portcullis]=$P_PORTCULLIS; T_TOKEN[portcullis]=small
  T_SERVER[portcullis_big]=portcullis; T_PORT[portcullis_big]=$P_PORTCULLIS; T_TOKEN[portcullis_big]=big
  T_DESC[portcullis]="portcullis (HS256 verify, identity headers)"
  T_DESC[portcullis_big]="portcullis, 2,400-char token"
fi
# The fixed-rate pass is about per-hop latency; the big-token rows are about CPU, closed loop only.
RATE_TARGETS=()
for t in "${TARGETS[@]}"; do [[ $t == *_big ]] || RATE_TARGETS+=("$t"); done

for p in $P_UPSTREAM $P_NGINX $P_HAPROXY $P_HAPROXY_JWT $P_PORTCULLIS $P_ADMIN; do
  if ss -Htln "sport = :$p" | grep -q .; then fail "port $p is already in use (set BASE_PORT); nothing was started"; fi
done

NCPU=$(nproc)
SRV_CPU=$((NCPU - 1))
case $PINNING in
  shared) LG_CPU=$SRV_CPU ;;
  split) LG_CPU=0; ((NCPU >= 2)) || { PINNING=shared; LG_CPU=$SRV_CPU; } ;;
  off) LG_CPU= ;;
esac
SRV_PIN=(); LG_PIN=(); PIN_DESC="no pinning"
if [[ $PINNING != off ]]; then
  SRV_PIN=(taskset -c "$SRV_CPU"); LG_PIN=(taskset -c "$LG_CPU")
  PIN_DESC="servers on CPU $SRV_CPU, load generator on CPU $LG_CPU"
fi
OTHER_CPU=0  # the CPU the servers are not on (the same one on a 1-CPU machine)
((SRV_CPU == 0 && NCPU > 1)) && OTHER_CPU=1

# ------------------------------------------------------------------------------------------
# Key, keys directory (kubelet Secret-volume layout) and tokens
# ------------------------------------------------------------------------------------------
# 32 alphanumeric bytes: a valid raw HS256 key for portcullis, and a string HAProxy's
# configuration can hold verbatim.
KEY=$(LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32) || true
((${#KEY} == 32)) || fail "could not make a key"
KEYS_DIR=$OUT/keys
stamp=..$(date -u +%Y_%m_%d_%H_%M_%S).000000001
mkdir -p "$KEYS_DIR/$stamp"
printf '%s' "$KEY" >"$KEYS_DIR/$stamp/$KID"
ln -s "$stamp" "$KEYS_DIR/..data"
ln -s "..data/$KID" "$KEYS_DIR/$KID"
chmod 0644 "$KEYS_DIR/$stamp/$KID"

python3 "$BENCH_DIR/mint_token.py" --key-file "$KEYS_DIR/$KID" --iss "$ISS" --aud "$AUD" --kid "$KID" \
  --sub "$SUBJECT" --out "$OUT/tokens" >"$OUT/tokens/lengths.json" || fail "minting tokens failed"
tok() { cat "$OUT/tokens/$1.jwt"; }

# ------------------------------------------------------------------------------------------
# Configurations
# ------------------------------------------------------------------------------------------
nginx_common() { # nginx_common <name>: the part both nginx configs share
  cat <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $OUT/tmp/$1.pid;
error_log $OUT/logs/$1-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server_tokens off;
  keepalive_timeout 75s;
  keepalive_requests 1000000;
  client_body_temp_path $OUT/tmp/$1-body;
  proxy_temp_path $OUT/tmp/$1-proxy;
  fastcgi_temp_path $OUT/tmp/$1-fastcgi;
  uwsgi_temp_path $OUT/tmp/$1-uwsgi;
  scgi_temp_path $OUT/tmp/$1-scgi;
EOF
}

{
  nginx_common upstream
  cat <<EOF
  server {
    listen $LOOP:$P_UPSTREAM backlog=1024;
    location / { default_type text/plain; return 200 "ok\n"; }
    # For the functional checks: what identity did the proxy hand the app?
    location = /whoami {
      default_type text/plain;
      return 200 "subject=[\$http_x_auth_subject] issuer=[\$http_x_auth_issuer] authorization=[\$http_authorization]\n";
    }
  }
}
EOF
} >"$OUT/conf/upstream.conf"

{
  nginx_common nginx
  cat <<EOF
  upstream app {
    server $LOOP:$P_UPSTREAM;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen $LOOP:$P_NGINX backlog=1024;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
} >"$OUT/conf/nginx.conf"

haproxy_common() {
  cat <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s
backend app
  http-reuse always
  server s1 $LOOP:$P_UPSTREAM
EOF
}

{
  haproxy_common
  cat <<EOF
frontend plain
  bind $LOOP:$P_HAPROXY
  default_backend app
EOF
} >"$OUT/conf/haproxy.cfg"

{
  haproxy_common
  cat <<EOF
# The same work portcullis does per request: HS256 signature, exp, iss, aud, then hand the app
# the subject and issuer, replacing whatever the client sent, without the Authorization header.
# Every rule denies unless its condition holds, so a missing claim or a failing converter is a 401.
frontend jwt
  bind $LOOP:$P_HAPROXY_JWT
  http-request set-var(txn.jwt) http_auth_bearer
  http-request deny deny_status 401 unless { var(txn.jwt) -m found }
  http-request deny deny_status 401 unless { var(txn.jwt),jwt_header_query('\$.alg') -m str HS256 }
  http-request deny deny_status 401 unless { var(txn.jwt),jwt_verify("HS256","$KEY") -m int 1 }
  http-request set-var(txn.now) date
  http-request deny deny_status 401 unless { var(txn.jwt),jwt_payload_query('\$.exp','int'),sub(txn.now) -m int gt 0 }
  http-request set-var(txn.iss) var(txn.jwt),jwt_payload_query('\$.iss')
  http-request deny deny_status 401 unless { var(txn.iss) -m str $ISS }
  http-request deny deny_status 401 unless { var(txn.jwt),jwt_payload_query('\$.aud') -m str $AUD }
  http-request set-var(txn.sub) var(txn.jwt),jwt_payload_query('\$.sub')
  http-request deny deny_status 401 unless { var(txn.sub) -m found }
  http-request set-header x-auth-subject %[var(txn.sub)]
  http-request set-header x-auth-issuer %[var(txn.iss)]
  http-request del-header authorization
  default_backend app
EOF
} >"$OUT/conf/haproxy-jwt.cfg"

nginx -t -q -c "$OUT/conf/upstream.conf" 2>"$OUT/logs/nginx-t.log" || fail "upstream.conf: $(cat "$OUT/logs/nginx-t.log")"
nginx -t -q -c "$OUT/conf/nginx.conf" 2>"$OUT/logs/nginx-t.log" || fail "nginx.conf: $(cat "$OUT/logs/nginx-t.log")"
haproxy -c -q -f "$OUT/conf/haproxy.cfg" >"$OUT/logs/haproxy-c.log" 2>&1 || fail "haproxy.cfg: $(cat "$OUT/logs/haproxy-c.log")"
haproxy -c -q -f "$OUT/conf/haproxy-jwt.cfg" >"$OUT/logs/haproxy-c.log" 2>&1 || fail "haproxy-jwt.cfg: $(cat "$OUT/logs/haproxy-c.log")"

# ------------------------------------------------------------------------------------------
# Machine description
# ------------------------------------------------------------------------------------------
steal_total() { awk '$1 == "cpu" { print $9 }' /proc/stat; }
STEAL_AT_START=$(steal_total)
T_AT_START=$(date +%s)
{
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p') x $NCPU ($(lscpu | sed -n 's/^Hypervisor vendor:[[:space:]]*/hypervisor /p')); sha_ni: $(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no)"
  echo "kernel: $(uname -srm)"
  echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "memory: $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
  echo "load_average_at_start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')"
  echo "haproxy: $(haproxy -v 2>&1 | sed -n 1p)"
  echo "wrk: $({ wrk -v 2>&1 || true; } | sed -n 1p)"
  echo "h2load: $(h2load --version 2>&1 | sed -n 1p)"
  echo "python: $(python3 --version 2>&1)"
  if ((WITH_PORTCULLIS)); then
    echo "portcullis: $PORTCULLIS_BIN ($(timeout 5 "$PORTCULLIS_BIN" --version 2>&1 | sed -n 1p || true); sha256 $(sha256sum "$PORTCULLIS_BIN" | cut -c1-16); built $(date -u -r "$PORTCULLIS_BIN" +%Y-%m-%dT%H:%M:%SZ))"
    echo "portcullis_repo: $(git --no-optional-locks -C "$REPO_DIR" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "portcullis_args: run --identity $AUD --issuer $ISS --listen $LOOP:$P_PORTCULLIS --upstream $LOOP:$P_UPSTREAM --admin-listen $LOOP:$P_ADMIN --keys-dir $KEYS_DIR --log-format json${PORTCULLIS_ARGS:+ $PORTCULLIS_ARGS}"
  else
    echo "portcullis: not measured"
  fi
  echo "knobs: REPS=$REPS DURATION=$DURATION WARMUP=$WARMUP CONNS=$CONNS RATE=$RATE PINNING=$PINNING ($PIN_DESC) MAX_STEAL=$MAX_STEAL STEAL_RETRIES=$STEAL_RETRIES BUSY_MAX=$BUSY_MAX BUSY_WAIT=$BUSY_WAIT"
  echo "tokens: $(cat "$OUT/tokens/lengths.json")"
} >"$OUT/machine.txt"
printf 'target\tserver\tport\ttoken\tdescription\n' >"$OUT/targets.tsv"
for t in "${TARGETS[@]}"; do
  printf '%s\t%s\t%s\t%s\t%s\n' "$t" "${T_SERVER[$t]}" "${T_PORT[$t]}" "${T_TOKEN[$t]}" "${T_DESC[$t]}" >>"$OUT/targets.tsv"
done
note "run directory $OUT"

# ------------------------------------------------------------------------------------------
# Start the servers
# ------------------------------------------------------------------------------------------
code_of() { # code_of <url> [curl args]: HTTP status, 000 if nothing answered
  timeout 5 curl --noproxy '*' -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" || true
}

spawn() { # spawn <name> <command...>: start in the foreground of a background job, pinned
  local name=$1; shift
  "${SRV_PIN[@]}" "$@" >"$OUT/logs/$name.log" 2>&1 &
  local pid=$! st
  for _ in 1 2 3 4 5 6 7 8 9 10; do st=$(starttime "$pid") && break; sleep 0.05; done
  [[ -n ${st:-} ]] || fail "$name exited at once (see $OUT/logs/$name.log)"
  OWN+=("$name $pid $st")
  PIDS_OF[$name]=$pid
  START_OF[$name]=$st
}
up() { alive "${PIDS_OF[$1]}" "${START_OF[$1]}"; } # up <name>

await_port() { # await_port <name> <port> <seconds>
  local name=$1 port=$2 n=$(($3 * 10))
  while ((n-- > 0)); do
    up "$name" || fail "$name exited during start-up (see $OUT/logs/$name.log)"
    [[ $(code_of "http://$LOOP:$port/") != 000 ]] && return 0
    sleep 0.1
  done
  fail "$name does not answer on $LOOP:$port (see $OUT/logs/$name.log)"
}

adopt_children() { # nginx forks its worker: measure and stop it too, by PID + start time
  local name=$1 pid=${PIDS_OF[$1]} c st
  for c in $(ps -o pid= --ppid "$pid" || true); do
    st=$(starttime "$c") || continue
    OWN+=("$name-child $c $st")
    PIDS_OF[$name]+=" $c"
  done
}

spawn upstream nginx -c "$OUT/conf/upstream.conf"
await_port upstream "$P_UPSTREAM" 10; adopt_children upstream
spawn nginx nginx -c "$OUT/conf/nginx.conf"
await_port nginx "$P_NGINX" 10; adopt_children nginx
spawn haproxy haproxy -db -f "$OUT/conf/haproxy.cfg"
await_port haproxy "$P_HAPROXY" 10
spawn haproxy_jwt haproxy -db -f "$OUT/conf/haproxy-jwt.cfg"
await_port haproxy_jwt "$P_HAPROXY_JWT" 10
if ((WITH_PORTCULLIS)); then
  read -r -a extra_args <<<"$PORTCULLIS_ARGS"
  spawn portcullis "$PORTCULLIS_BIN" run --identity "$AUD" --issuer "$ISS" \
    --listen "$LOOP:$P_PORTCULLIS" --upstream "$LOOP:$P_UPSTREAM" --admin-listen "$LOOP:$P_ADMIN" \
    --keys-dir "$KEYS_DIR" --log-format json "${extra_args[@]}"
  t0=$(date +%s%N)
  n=$((PORTCULLIS_WAIT * 10)); ready=
  while ((n-- > 0)); do
    up portcullis || fail "portcullis exited during start-up (see $OUT/logs/portcullis.log)"
    if [[ $(code_of "http://$LOOP:$P_ADMIN/readyz") == 200 ]]; then ready=1; break; fi
    sleep 0.1
  done
  [[ -n $ready ]] || fail "portcullis /readyz on $LOOP:$P_ADMIN did not answer 200 within ${PORTCULLIS_WAIT}s: $(timeout 3 curl --noproxy '*' -s --max-time 2 "http://$LOOP:$P_ADMIN/readyz" | head -c 300) (see $OUT/logs/portcullis.log)"
  await_port portcullis "$P_PORTCULLIS" 5
  adopt_children portcullis
  echo "portcullis_ready_after_ms: $((($(date +%s%N) - t0) / 1000000))" >>"$OUT/machine.txt"
fi
for e in "${OWN[@]}"; do note "started ${e% *}"; done

# ------------------------------------------------------------------------------------------
# Functional checks, before any load
# ------------------------------------------------------------------------------------------
CHECKS=$OUT/checks.txt
: >"$CHECKS"
FAILED=()
expect() { # expect <label> <code> <body substring or ''> <port> <path> [curl args]
  local label=$1 want=$2 needle=$3 port=$4 path=$5; shift 5
  local resp code body verdict=ok
  resp=$(timeout 5 curl --noproxy '*' -s --max-time 3 -w '\n%{http_code}' "$@" "http://$LOOP:$port$path" || true)
  code=${resp##*$'\n'}; body=${resp%$'\n'*}
  [[ $code == "$want" ]] || verdict=FAIL
  [[ -z $needle || $body == *"$needle"* ]] || verdict=FAIL
  [[ $verdict == ok ]] || FAILED+=("$label (wanted $want${needle:+ with '$needle'}, got $code: $(printf '%s' "$body" | tr -s '\n' ' ' | head -c 120))")
  printf '%-4s %-62s want %s got %s  %s\n' "$verdict" "$label" "$want" "$code" "$(printf '%s' "$body" | tr -s '\n' ' ' | head -c 100)" >>"$CHECKS"
}
bearer() { printf 'Authorization: Bearer %s' "$(tok "$1")"; }

jwt_checks() { # jwt_checks <target name> <port>
  local n=$1 p=$2 bad
  expect "$n: valid token" 200 '' "$p" / -H "$(bearer small)"
  expect "$n: valid token, app sees the subject" 200 "subject=[$SUBJECT]" "$p" /whoami -H "$(bearer small)"
  expect "$n: valid token, app sees the issuer" 200 "issuer=[$ISS]" "$p" /whoami -H "$(bearer small)"
  expect "$n: valid token, spoofed x-auth-subject replaced" 200 "subject=[$SUBJECT]" "$p" /whoami \
    -H "$(bearer small)" -H 'x-auth-subject: admin'
  expect "$n: valid token, Authorization not passed on" 200 "authorization=[]" "$p" /whoami -H "$(bearer small)"
  expect "$n: 2,400-char token, app sees the subject" 200 "subject=[$SUBJECT]" "$p" /whoami -H "$(bearer big)"
  expect "$n: no token" 401 '' "$p" /
  expect "$n: not a Bearer scheme" 401 '' "$p" / -H "Authorization: Basic YWRtaW46YWRtaW4="
  for bad in bad_sig tampered expired wrong_aud wrong_iss no_exp alg_none garbage; do
    expect "$n: $bad" 401 '' "$p" / -H "$(bearer "$bad")"
  done
}

expect "direct: valid token" 200 '' "$P_UPSTREAM" / -H "$(bearer small)"
expect "nginx: valid token" 200 '' "$P_NGINX" / -H "$(bearer small)"
expect "haproxy: valid token" 200 '' "$P_HAPROXY" / -H "$(bearer small)"
jwt_checks haproxy_jwt "$P_HAPROXY_JWT"
((WITH_PORTCULLIS)) && jwt_checks portcullis "$P_PORTCULLIS"
if ((${#FAILED[@]})); then
  note "functional checks FAILED (${#FAILED[@]}); no load was run:"
  for f in "${FAILED[@]}"; do note "  - $f"; done
  fail "see $CHECKS"
fi
note "functional checks passed ($(wc -l <"$CHECKS") of them)"

# ------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------
cat >"$OUT/conf/report.lua" <<'EOF'
-- wrk: print one machine-readable line with the counts and the latency distribution (µs)
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d connect_err=%d read_err=%d write_err=%d timeout_err=%d non2xx=%d " ..
    "p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d mean_us=%.1f\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
EOF

cpu_ticks() { # utime+stime of the given PIDs (clock ticks)
  local sum=0 p s
  for p in "$@"; do
    s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    s=${s##*) }; set -- $s
    sum=$((sum + ${12} + ${13}))
  done
  echo "$sum"
}
rss_kb() { local sum=0 p v; for p in "$@"; do v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null); sum=$((sum + ${v:-0})); done; echo "$sum"; }
cpu_line() { awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8, $5 + $6, $9 }' /proc/stat; } # busy idle steal
child_cpu_us() { # CPU time of this shell's finished children so far (µs), from the `times` builtin
  # (`times` must run in the shell that waited for the load generator, not in a $(...) subshell)
  local f=$OUT/tmp/times.$BASHPID t
  times >"$f"; t=$(sed -n 2p "$f")
  awk -v t="$t" 'BEGIN { n = split(t, a, " "); s = 0
    for (i = 1; i <= n; i++) { split(a[i], b, "m"); sub("s", "", b[2]); s += b[1] * 60 + b[2] }
    printf "%d", s * 1e6 }' >"$f"
  CHILD_US=$(cat "$f")
}
busy_pct() { # machine-wide busy % over 2 s
  local a b; a=($(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat))
  sleep 2
  b=($(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat))
  echo $(((b[0] - a[0]) * 100 / ((b[1] - a[1]) > 0 ? (b[1] - a[1]) : 1)))
}
NOISY_ROUNDS=0
wait_quiet() {
  local waited=0 pct
  while :; do
    pct=$(busy_pct)
    ((pct <= BUSY_MAX)) && return 0
    if ((waited >= BUSY_WAIT)); then
      note "machine still ${pct}% busy after ${waited}s; measuring anyway (round flagged noisy)"
      NOISY_ROUNDS=$((NOISY_ROUNDS + 1)); return 0
    fi
    ((waited == 0)) && note "machine ${pct}% busy with something else; waiting up to ${BUSY_WAIT}s"
    sleep 3; waited=$((waited + 5))
  done
}

RUNS=$OUT/runs.tsv
printf 'mode\ttarget\tround\tattempt\tfile\twall_us\tproxy_ticks\tupstream_ticks\tloadgen_us\tpin_busy\tpin_idle\tpin_steal\tother_busy\tother_idle\tother_steal\tkept\n' >"$RUNS"

# The load generator runs as a background job that this shell waits for, so that Ctrl-C or a
# SIGTERM is acted on at once (a trap fires during `wait`, not during a foreground command).
LG_PID=
loadgen() { # loadgen <seconds> <output file> <command...>: pinned, bounded by timeout
  local secs=$1 out=$2 rc=0; shift 2
  timeout -k 5 $((secs + 20)) "${LG_PIN[@]}" "$@" >"$out" 2>&1 &
  LG_PID=$!
  wait "$LG_PID" || rc=$?
  LG_PID=
  return "$rc"
}

one_run() { # one_run <wrk|rate> <target> <round> <attempt>; sets STEAL to the steal % of the pinned CPU
  local mode=$1 t=$2 r=$3 a=$4 url="http://$LOOP:${T_PORT[$2]}/" auth
  local file=$OUT/raw/$mode-$t-r$r-a$a.txt
  local pids=${PIDS_OF[${T_SERVER[$t]}]} ups=${PIDS_OF[upstream]}
  [[ $t == direct ]] && pids=
  auth="Authorization: Bearer $(tok "${T_TOKEN[$t]}")"
  local p0 u0 c0 w0 s0 o0 p1 u1 c1 w1 s1 o1
  p0=$(cpu_ticks $pids); u0=$(cpu_ticks $ups); child_cpu_us; c0=$CHILD_US
  s0=($(cpu_line "$SRV_CPU")); o0=($(cpu_line "$OTHER_CPU")); w0=$(date +%s%N)
  if [[ $mode == wrk ]]; then
    loadgen "$DURATION" "$file" wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s \
      -s "$OUT/conf/report.lua" -H "$auth" "$url" || note "wrk exited with status $? ($t, see $file)"
  else
    rm -f "$file.log"
    loadgen "$DURATION" "$file" h2load --h1 -t1 -c1 --rps="$RATE" -D "$DURATION" \
      --log-file="$file.log" -H "$auth" "$url" || note "h2load exited with status $? ($t, see $file)"
  fi
  w1=$(date +%s%N); s1=($(cpu_line "$SRV_CPU")); o1=($(cpu_line "$OTHER_CPU"))
  p1=$(cpu_ticks $pids); u1=$(cpu_ticks $ups); child_cpu_us; c1=$CHILD_US
  local steal_pct=$(((s1[2] - s0[2]) * 100 / ((s1[0] + s1[1] + s1[2] - s0[0] - s0[1] - s0[2]) > 0 ? (s1[0] + s1[1] + s1[2] - s0[0] - s0[1] - s0[2]) : 1)))
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$t" "$r" "$a" "$(basename "$file")" \
    $(((w1 - w0) / 1000)) $((p1 - p0)) $((u1 - u0)) $((c1 - c0)) \
    $((s1[0] - s0[0])) $((s1[1] - s0[1])) $((s1[2] - s0[2])) $((o1[0] - o0[0])) $((o1[1] - o0[1])) $((o1[2] - o0[2])) \
    "$( ((steal_pct <= MAX_STEAL)) && echo 1 || echo 0)" >>"$RUNS"
  STEAL=$steal_pct
}

measure() { # measure <mode> <target> <round>: one run, repeated if the hypervisor stole too much
  local a=1 steal
  while :; do
    one_run "$@" "$a"; steal=$STEAL
    if ((steal <= MAX_STEAL)); then return 0; fi
    if ((a > STEAL_RETRIES)); then
      note "  $1 $2 round $3: ${steal}% steal again; keeping it (marked in the report)"
      sed -i '$ s/0$/1/' "$RUNS"  # the last attempt counts, flagged by its steal figure
      return 0
    fi
    note "  $1 $2 round $3: ${steal}% of the CPU stolen by the hypervisor (> ${MAX_STEAL}%); again"
    a=$((a + 1)); sleep 2
  done
}

rss_snapshot() { # rss_snapshot <phase>
  local s
  for s in upstream nginx haproxy haproxy_jwt portcullis; do
    if [[ -n ${PIDS_OF[$s]:-} ]]; then printf '%s\t%s\t%s\n' "$1" "$s" "$(rss_kb ${PIDS_OF[$s]})"; fi
  done >>"$OUT/rss.tsv"
}
rss_snapshot idle

if ((WARMUP > 0)); then
  note "warm-up: ${WARMUP}s per target"
  for t in "${TARGETS[@]}"; do
    loadgen "$WARMUP" "$OUT/raw/warmup-$t.txt" wrk -t1 -c"$CONNS" -d"${WARMUP}s" \
      -H "Authorization: Bearer $(tok "${T_TOKEN[$t]}")" "http://$LOOP:${T_PORT[$t]}/" || true
  done
fi

rotate() { # rotate <k> <items...>: the items starting at index k mod n
  local k=$1; shift; local n=$# i; local -a it=("$@")
  for ((i = 0; i < n; i++)); do echo "${it[(k + i) % n]}"; done
}
nrate=$((RATE > 0 ? ${#RATE_TARGETS[@]} : 0))
note "measuring: $REPS round(s) x (${#TARGETS[@]} closed-loop + $nrate fixed-rate runs) x ${DURATION}s ≈ $(((REPS * (${#TARGETS[@]} + nrate) * (DURATION + 1) + 59) / 60)) min"
for ((r = 1; r <= REPS; r++)); do
  wait_quiet
  for t in $(rotate $((r - 1)) "${TARGETS[@]}"); do
    note "round $r/$REPS  closed loop  $t"
    measure wrk "$t" "$r"
  done
  if ((RATE > 0)); then
    for t in $(rotate $((r - 1)) "${RATE_TARGETS[@]}"); do
      note "round $r/$REPS  ${RATE} req/s    $t"
      measure rate "$t" "$r"
    done
  fi
done

rss_snapshot after

# The JWT targets must still say no after the load, and still say yes.
FAILED=()
for n in haproxy_jwt portcullis; do
  [[ $n == portcullis ]] && ((!WITH_PORTCULLIS)) && continue
  p=$P_HAPROXY_JWT; [[ $n == portcullis ]] && p=$P_PORTCULLIS
  expect "$n after load: valid token" 200 "subject=[$SUBJECT]" "$p" /whoami -H "$(bearer small)"
  expect "$n after load: bad_sig" 401 '' "$p" / -H "$(bearer bad_sig)"
  expect "$n after load: expired" 401 '' "$p" / -H "$(bearer expired)"
done
for e in "${OWN[@]}"; do read -r n p st <<<"$e"; alive "$p" "$st" || FAILED+=("$n (pid $p) died during the load"); done
stop_all

{
  echo "steal_during_run_pct_of_machine: $(awk -v a="$STEAL_AT_START" -v b="$(steal_total)" -v s="$(($(date +%s) - T_AT_START))" -v n="$NCPU" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf("%.1f", (s > 0) ? 100 * (b - a) / (s * n * hz) : 0) }')"
  echo "noisy_rounds: $NOISY_ROUNDS of $REPS (machine busier than BUSY_MAX=${BUSY_MAX}% before the round)"
  echo "duration_s: $(($(date +%s) - T_AT_START))"
} >>"$OUT/machine.txt"

python3 "$BENCH_DIR/summarize.py" "$OUT" | tee "$OUT/results.md"
note "everything (configs, tokens, raw wrk/h2load output, runs.tsv, results.md/json) is in $OUT"
if ((${#FAILED[@]})); then
  for f in "${FAILED[@]}"; do note "  - $f"; done
  fail "post-load checks failed (see $CHECKS)"
fi
