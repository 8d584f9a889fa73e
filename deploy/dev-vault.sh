#!/usr/bin/env bash
# `make run-vault`: valet dev beside a dev Vault (the v1.13.0 test server)
# and a throwaway PostgreSQL, with Vault's database engine wired to it, so
# the demo-vault and demo-db roles work. Everything stops on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

VAULT_BIN=deploy/vault/bin/vault
VAULT_PORT=${VALET_DEV_VAULT_PORT:-8200}
PG_PORT=${VALET_DEV_PGPORT:-55432}
export GODEBUG=x509negativeserial=1
export VAULT_ADDR=http://127.0.0.1:$VAULT_PORT
export VAULT_TOKEN=valet-dev-root
export VALET_DEV_PGPORT=$PG_PORT
export PATH=$PWD/deploy/vault/bin:$PATH

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -n 1 || true)
if [ -z "$PGBIN" ]; then
  echo "PostgreSQL is missing: sudo apt-get install -y postgresql" >&2
  exit 1
fi
PGDIR=$(mktemp -d /tmp/valet-dev-pg.XXXXXX)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres: "$PGDIR"
PGPASS=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$PGPASS" > "$PGDIR/pw"
[ "$(id -u)" = 0 ] && chown postgres: "$PGDIR/pw"

cleanup() {
  [ -n "${VAULT_PID:-}" ] && kill "$VAULT_PID" 2>/dev/null || true
  as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$PGDIR"
}
trap cleanup EXIT

as_pg "$PGBIN/initdb" -D "$PGDIR/data" -U postgres --auth=scram-sha-256 --pwfile="$PGDIR/pw" -E UTF8 >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/log" -w \
  -o "-p $PG_PORT -k $PGDIR -c listen_addresses=127.0.0.1" start >/dev/null
echo "PostgreSQL on 127.0.0.1:$PG_PORT"

"$VAULT_BIN" server -dev -dev-no-store-token -dev-root-token-id="$VAULT_TOKEN" \
  -dev-listen-address="127.0.0.1:$VAULT_PORT" > "$PGDIR/vault.log" 2>&1 &
VAULT_PID=$!
for _ in $(seq 1 100); do
  curl -fsS "$VAULT_ADDR/v1/sys/health" >/dev/null 2>&1 && break
  sleep 0.1
done
echo "Vault on $VAULT_ADDR (root token $VAULT_TOKEN)"

vault secrets enable database >/dev/null
vault write database/config/valet-demo plugin_name=postgresql-database-plugin allowed_roles=valet-demo \
  connection_url="postgresql://{{username}}:{{password}}@127.0.0.1:$PG_PORT/postgres?sslmode=disable" \
  username=postgres password="$PGPASS" >/dev/null
vault write database/roles/valet-demo db_name=valet-demo default_ttl=5m max_ttl=1h \
  creation_statements="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT pg_read_all_data TO \"{{name}}\";" >/dev/null

./bin/valet dev
