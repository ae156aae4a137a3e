# Sourced by .ci/run: starts a PostgreSQL server on 127.0.0.1 for tests/test_postgres.py and
# exports its URL as EXPERIMENTS_TEST_POSTGRES. Installs Debian's postgresql when it is missing
# (as root). The server's files live in a temporary folder; `pg_ctl stop` ends it.
# Connections over TCP need a password, as on a real database server; the URL holds none: libpq
# reads it from the password file that PGPASSFILE names, as database users keep theirs
# (docs/sweeps.md), so the tests sweep the way the docs recommend.
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$pg_bin" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
pg_data=$(mktemp -d /tmp/experiments-postgres.XXXXXX)
pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pg_password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
pg_pwfile=$(mktemp /tmp/experiments-postgres-pw.XXXXXX)
printf '%s\n' "$pg_password" > "$pg_pwfile"
if [ "$(id -u)" = 0 ]; then  # PostgreSQL refuses to run as root
  chown postgres "$pg_data" "$pg_pwfile"
  as_postgres() { runuser -u postgres -- "$@"; }
else
  as_postgres() { "$@"; }
fi
as_postgres "$pg_bin/initdb" -D "$pg_data" --auth-local=trust --auth-host=scram-sha-256 --pwfile="$pg_pwfile" \
  -U postgres >/dev/null
rm -f "$pg_pwfile"
export PGPASSFILE="$pg_data.pgpass"
( umask 077 && printf '127.0.0.1:%s:*:postgres:%s\n' "$pg_port" "$pg_password" > "$PGPASSFILE" )
as_postgres "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_data/server.log" -w \
  -o "-h 127.0.0.1 -p $pg_port -k $pg_data -c max_connections=200" start >/dev/null
as_postgres "$pg_bin/createdb" -h "$pg_data" -p "$pg_port" -U postgres experiments_test
export EXPERIMENTS_TEST_POSTGRES="postgresql+psycopg://postgres@127.0.0.1:$pg_port/experiments_test"
echo "PostgreSQL server for the tests: $EXPERIMENTS_TEST_POSTGRES (password in $PGPASSFILE)"
unset pg_password
