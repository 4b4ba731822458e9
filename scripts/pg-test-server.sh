#!/usr/bin/env bash
# Bring up a PostgreSQL server for Toolhost's tests (and for trying Toolhost
# on PostgreSQL) on this machine, and print the URL to use:
#
#   eval "$(scripts/pg-test-server.sh)"    # exports TOOLHOST_TEST_DATABASE_URL
#   eval "$(scripts/pg-test-server.sh DB)" # the same, for a database DB
#
# As root: installs Debian's `postgresql` if it is missing, starts the
# packaged cluster (`pg_ctlcluster <version> main start`) and creates a role
# and database `toolhost_test` (password auth on 127.0.0.1). As another user
# with PostgreSQL's binaries installed: `initdb` into a directory of its own
# (TOOLHOST_PG_DIR, default /tmp/toolhost-pg-$USER) listening on 127.0.0.1:
# ${TOOLHOST_PG_PORT:-54329}. Idempotent: run it again and it prints the same
# URL. Progress goes to stderr; stdout is only the export line.
set -euo pipefail

ROLE=toolhost_test
PASS=${TOOLHOST_PG_PASSWORD:-toolhost_test}
DB=${1:-toolhost_test}
case "$DB" in *[!a-z0-9_]*|"") echo "pg-test-server: the database name must be [a-z0-9_]+" >&2; exit 2;; esac
say() { echo "pg-test-server: $*" >&2; }

pg_bin() {
  local v
  v=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1 || true)
  [ -n "$v" ] && echo "/usr/lib/postgresql/$v/bin"
}

sql_as_postgres() {
  runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qAtX -p "$PORT" "$@"
}

if [ "$(id -u)" = 0 ]; then
  if [ -z "$(pg_bin)" ]; then
    say "installing postgresql (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
  fi
  VERSION=$(basename "$(dirname "$(pg_bin)")")
  if ! pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main"' | grep -q .; then
    say "creating cluster $VERSION main"
    pg_createcluster "$VERSION" main >&2
  fi
  PORT=$(pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $3}')
  if ! pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $4}' | grep -q online; then
    say "starting cluster $VERSION main on port $PORT"
    pg_ctlcluster "$VERSION" main start >&2
  fi
  for _ in $(seq 50); do
    sql_as_postgres -c 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.2
  done
  # Several test servers (each a connection pool) at once need more than
  # the default 100 connections.
  if [ "$(sql_as_postgres -c 'SHOW max_connections')" -lt 300 ]; then
    say "raising max_connections to 300 (restart)"
    sql_as_postgres -c 'ALTER SYSTEM SET max_connections = 300' >&2
    pg_ctlcluster "$VERSION" main restart >&2
    for _ in $(seq 50); do
      sql_as_postgres -c 'SELECT 1' >/dev/null 2>&1 && break
      sleep 0.2
    done
  fi
  if [ "$(sql_as_postgres -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
    sql_as_postgres -c "CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASS'" >&2
  else
    sql_as_postgres -c "ALTER ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASS'" >&2
  fi
  if [ "$(sql_as_postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    sql_as_postgres -c "CREATE DATABASE $DB OWNER $ROLE" >&2
  fi
else
  BIN=$(pg_bin)
  if [ -z "$BIN" ]; then
    say "PostgreSQL is not installed; run this as root (it installs Debian's postgresql)"
    exit 1
  fi
  PORT=${TOOLHOST_PG_PORT:-54329}
  DIR=${TOOLHOST_PG_DIR:-/tmp/toolhost-pg-$(id -un)}
  if [ ! -f "$DIR/PG_VERSION" ]; then
    say "initdb into $DIR"
    mkdir -p "$DIR"
    pwfile=$(mktemp)
    echo "$PASS" > "$pwfile"
    "$BIN/initdb" -D "$DIR" -U "$ROLE" --pwfile="$pwfile" -A scram-sha-256 >&2
    rm -f "$pwfile"
  fi
  if ! "$BIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1; then
    say "starting on 127.0.0.1:$PORT"
    "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w \
      -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c max_connections=300" start >&2
  fi
  export PGPASSWORD=$PASS
  if [ "$("$BIN/psql" -qAtX -h 127.0.0.1 -p "$PORT" -U "$ROLE" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U "$ROLE" "$DB" >&2
  fi
fi

URL="postgres://$ROLE:$PASS@127.0.0.1:$PORT/$DB"
say "ready: $URL"
echo "export TOOLHOST_TEST_DATABASE_URL=$URL"
