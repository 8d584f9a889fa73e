#!/usr/bin/env bash
# `make run-cloud`: valet dev beside the local stand-ins for cloud and SaaS
# services (cmd/valet-cloudtest), so the cloud demo roles work with no
# cloud account. Each service has its own function below: it starts the
# stand-in and exports what `valet dev` reads to add its backend and roles.
# Everything stops on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=$(mktemp -d /tmp/valet-dev-cloud.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# start_service NAME ARGS...: runs `valet-cloudtest NAME ARGS...`, waits for
# its KEY=value lines and exports them.
start_service() {
  local name=$1; shift
  ./bin/valet-cloudtest "$name" "$@" > "$WORK/$name.env" 2> "$WORK/$name.log" &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    grep -q '^# ' "$WORK/$name.env" 2>/dev/null && break
    if ! kill -0 "${PIDS[-1]}" 2>/dev/null; then
      echo "valet-cloudtest $name failed:" >&2; cat "$WORK/$name.log" >&2; exit 1
    fi
    sleep 0.1
  done
  set -a
  # shellcheck disable=SC1090
  . "$WORK/$name.env"
  set +a
  grep '^# ' "$WORK/$name.env" | sed 's/^# //'
}

# AWS: STS and IAM with the role valet-demo; valet's own keys are the test
# server's (the standard AWS chain reads them); role aws-demo.
start_aws() {
  start_service aws --listen "127.0.0.1:${VALET_DEV_AWS_PORT:-8790}"
}

# GitHub: app 1 installed on acme (widgets, gadgets, docs); role gh-demo.
start_github() {
  start_service github --listen "127.0.0.1:${VALET_DEV_GITHUB_PORT:-8761}" --dir "$WORK/github"
}

# Google Cloud: IAM Credentials with the service account valet-demo;
# valet's own identity is the test server's key file (Application Default
# Credentials read GOOGLE_APPLICATION_CREDENTIALS); role gcp-demo.
start_gcp() {
  start_service gcp --listen "127.0.0.1:${VALET_DEV_GCP_PORT:-8792}" --dir "$WORK/gcp"
}

start_aws
start_github
start_gcp

# In the background, so that a TERM runs the cleanup at once.
./bin/valet dev "$@" &
PIDS+=($!)
wait "${PIDS[-1]}"
