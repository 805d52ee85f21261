#!/usr/bin/env bash
# Make a local PostgreSQL server available to the tests and the benchmark (Debian, run as root).
#
# Idempotent: installs the server from apt when its binaries are missing, creates and starts a
# cluster when none is running (loopback and Unix socket only), makes a role the tests can use
# (LOGIN CREATEDB, password authentication over 127.0.0.1) and prints the DSN:
#
#     eval "$(bash .ci/postgres.sh)"     # exports EXPORTER_TEST_PG_DSN
#
# The role and password are test-only (LETTA_EXPORTER_TEST_PG_ROLE / _PASSWORD override them);
# the tests create a database of their own per module and drop it afterwards.
set -euo pipefail

role=${LETTA_EXPORTER_TEST_PG_ROLE:-letta_exporter_test}
password=${LETTA_EXPORTER_TEST_PG_PASSWORD:-letta_exporter_test}
log() { echo "postgres.sh: $*" >&2; }

newest_version() { ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1; }

version=$(newest_version)
if [ -z "$version" ] || [ ! -x "/usr/lib/postgresql/$version/bin/postgres" ]; then
  log "no PostgreSQL server found: installing it with apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  version=$(newest_version)
fi

if ! pg_lsclusters -h 2>/dev/null | awk -v v="$version" '$1 == v' | grep -q .; then
  log "creating cluster $version/main"
  pg_createcluster "$version" main >&2
fi
cluster=$(pg_lsclusters -h | awk -v v="$version" '$1 == v {print $2; exit}')
port=$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c {print $3}')
status=$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c {print $4}')
if [ "$status" != "online" ]; then
  log "starting cluster $version/$cluster on port $port"
  # Loopback only: the tests and the benchmark never need another interface.
  pg_conftool "$version" "$cluster" set listen_addresses localhost >&2
  pg_ctlcluster "$version" "$cluster" start >&2
fi

for _ in $(seq 1 60); do
  pg_isready -q -h 127.0.0.1 -p "$port" && break
  sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$port" || { log "the server did not come up on port $port"; exit 1; }

as_postgres() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$port" "$@"; }
as_postgres -d postgres -v role="$role" -v password="$password" >&2 <<'SQL'
SELECT format('CREATE ROLE %I LOGIN CREATEDB', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN CREATEDB PASSWORD %L', :'role', :'password') \gexec
SQL

echo "export EXPORTER_TEST_PG_DSN=postgresql://$role:$password@127.0.0.1:$port/postgres"
