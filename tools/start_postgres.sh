#!/usr/bin/env bash
# Start a local PostgreSQL for the store's tests and print its SQLAlchemy URL.
#
# Idempotent: installs Debian's `postgresql` if it is missing, starts the cluster if
# it is down, creates the role and database if they do not exist. The last line of
# stdout is the URL, so callers can do
#     export LLAMA_ORCH_TEST_PG_URL="$(tools/start_postgres.sh | tail -n1)"
# Runs as root (CI containers) or with sudo available; psql runs as the postgres user.
set -euo pipefail

ROLE="${LLAMA_ORCH_PG_ROLE:-llama_orch}"
PASSWORD="${LLAMA_ORCH_PG_PASSWORD:-llama_orch}"
DB="${LLAMA_ORCH_PG_DB:-llama_orch_test}"
HOST=127.0.0.1

source "$(dirname "$0")/apt.sh"
as_postgres() { as_root su postgres -c "$1"; }

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    echo "installing postgresql (apt)..." >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi

VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
if ! as_root pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main"' | grep -q .; then
    as_root pg_createcluster "$VERSION" main >&2
fi
if ! as_root pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" && $4 == "online"' | grep -q .; then
    as_root pg_ctlcluster "$VERSION" main start >&2
fi
PORT="$(as_root pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $3}')"

# Wait until it accepts connections (a fresh cluster takes a moment).
for _ in $(seq 1 50); do
    if as_postgres "psql -p $PORT -qtAc 'SELECT 1'" >/dev/null 2>&1; then break; fi
    sleep 0.2
done

as_postgres "psql -p $PORT -v ON_ERROR_STOP=1 -qtA" >&2 <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
    CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD';
  ELSE
    ALTER ROLE $ROLE LOGIN PASSWORD '$PASSWORD';
  END IF;
END
\$\$;
SQL
if [ -z "$(as_postgres "psql -p $PORT -qtAc \"SELECT 1 FROM pg_database WHERE datname = '$DB'\"")" ]; then
    as_postgres "createdb -p $PORT -O $ROLE $DB" >&2
fi

echo "postgresql+asyncpg://$ROLE:$PASSWORD@$HOST:$PORT/$DB"
