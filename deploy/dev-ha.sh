#!/usr/bin/env bash
# `make run-ha`: several valet replicas on one machine. A 3-member etcd
# cluster (deploy/etcd/bin/etcd, built by `make etcd`), two `valet dev`
# replicas on it sharing one data directory (the same keys, as the README
# asks of replicas), and `valet dev lb`, a round-robin proxy that checks
# each replica's /readyz, as the one address agents and operators use.
# Ctrl-C stops everything; the data stays in ./valet-ha-data/ (delete it to
# start afresh).
set -euo pipefail
cd "$(dirname "$0")/.."

ETCD_BIN=deploy/etcd/bin/etcd
VALET=./bin/valet
DIR=${VALET_HA_DIR:-valet-ha-data}
ADDR=${VALET_HA_ADDR:-127.0.0.1:8750}
PORT0=${VALET_HA_PORT:-8751}     # replicas on PORT0 and PORT0+1
ETCD_PORT=${VALET_HA_ETCD_PORT:-23790} # members on ETCD_PORT+10*i (peers +1)

mkdir -p "$DIR/logs"
# Each part runs in a session of its own (setsid), so that Ctrl-C reaches
# only this script, which stops them in order: the proxy, the replicas
# (they write their last records while etcd still runs), then etcd.
etcd_pids=() valet_pids=() lb_pid=
alive() { for p; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
stop() { # stop PID...: TERM, then KILL after 15s
  [ $# -gt 0 ] || return 0
  kill "$@" 2>/dev/null || true
  for _ in $(seq 1 150); do
    alive "$@" || return 0
    sleep 0.1
  done
  kill -9 "$@" 2>/dev/null || true
}
cleanup() {
  trap - EXIT INT TERM
  stop $lb_pid
  stop "${valet_pids[@]}"
  stop "${etcd_pids[@]}"
  echo "stopped the proxy, the replicas and etcd (data kept in $DIR/)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for URL WHAT PID: until URL answers 200 while PID runs, at most
# 30s (a process that died cannot be answering: something else would be).
wait_for() {
  for _ in $(seq 1 300); do
    if ! kill -0 "$3" 2>/dev/null; then
      echo "$2 stopped; see $DIR/logs/" >&2
      exit 1
    fi
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not come up; see $DIR/logs/" >&2
  exit 1
}

# Every port must be free before anything starts: an answer on one of them
# would come from another process (a `make run` still running, say).
for hp in "$ADDR" "127.0.0.1:$PORT0" "127.0.0.1:$((PORT0 + 1))" \
  $(for i in 0 1 2; do echo "127.0.0.1:$((ETCD_PORT + 10 * i)) 127.0.0.1:$((ETCD_PORT + 10 * i + 1))"; done); do
  if (exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}") 2>/dev/null; then
    echo "$hp is in use by another process; stop it (or choose other ports: VALET_HA_ADDR, VALET_HA_PORT, VALET_HA_ETCD_PORT)" >&2
    exit 1
  fi
done

cluster= endpoints=
for i in 0 1 2; do
  cluster+="${cluster:+,}m$i=http://127.0.0.1:$((ETCD_PORT + 10 * i + 1))"
  endpoints+="${endpoints:+,}http://127.0.0.1:$((ETCD_PORT + 10 * i))"
done
for i in 0 1 2; do
  client=http://127.0.0.1:$((ETCD_PORT + 10 * i)) peer=http://127.0.0.1:$((ETCD_PORT + 10 * i + 1))
  setsid "$ETCD_BIN" --name "m$i" --data-dir "$DIR/etcd/m$i" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "$cluster" --initial-cluster-token valet-ha --initial-cluster-state new \
    --auto-compaction-retention 1h --log-level error > "$DIR/logs/etcd-m$i.log" 2>&1 &
  etcd_pids+=($!)
done
for i in 0 1 2; do wait_for "http://127.0.0.1:$((ETCD_PORT + 10 * i))/health" "etcd member m$i" "${etcd_pids[$i]}"; done
echo "etcd: 3 members at $endpoints"

names=(a b)
for r in 0 1; do
  name=${names[$r]} port=$((PORT0 + r))
  setsid "$VALET" dev --data-dir "$DIR" --listen "127.0.0.1:$port" --public-url "http://$ADDR" \
    --etcd "$endpoints" --replica "$name" > "$DIR/logs/valet-$name.log" 2>&1 &
  valet_pids+=($!)
  # The first replica writes the shared files (config, keys) before the
  # second starts.
  wait_for "http://127.0.0.1:$port/readyz" "valet replica $name" "${valet_pids[$r]}"
  echo "valet replica $name: http://127.0.0.1:$port (pid ${valet_pids[$r]})"
done

setsid "$VALET" dev lb --listen "$ADDR" "http://127.0.0.1:$PORT0" "http://127.0.0.1:$((PORT0 + 1))" > "$DIR/logs/lb.log" 2>&1 &
lb_pid=$!
wait_for "http://$ADDR/readyz" "the proxy" "$lb_pid"

self=$VALET
attest="$self dev attest --data-dir $DIR"
cat <<EOF

valet on etcd is running at http://$ADDR: two replicas behind one address
(logs in $DIR/logs/)

  operator token:  $(cat "$DIR/operator-token")
  web console:     http://$ADDR/ui/

Next, in another terminal:

  export VALET_ADDR=http://$ADDR VALET_TOKEN=$(cat "$DIR/operator-token")
  export VALET_ATTESTATION=\$($attest --sub my-agent)
  $self creds demo -o token     # mint through the one address
  $self leases list             # every replica sees every lease

Kill a replica the hard way, then mint again: the proxy sends the request
to the other replica (and, if the dead one led, the other takes the lead
within 2s):

  kill -9 ${valet_pids[0]}     # replica a
  $self creds demo -o token
  curl -s http://$ADDR/readyz; echo

Ctrl-C here stops everything.
EOF
while :; do sleep 1; done
