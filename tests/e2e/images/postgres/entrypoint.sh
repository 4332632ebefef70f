#!/bin/sh
# Runs the given command as is (app: psql), or initialises and starts PostgreSQL.
set -e
if [ "$#" -gt 0 ]; then exec "$@"; fi
data=/var/lib/postgresql/data
mkdir -p "$data" && chown -R postgres:postgres /var/lib/postgresql
if [ ! -s "$data/PG_VERSION" ]; then
    echo "$POSTGRES_PASSWORD" > /tmp/pw && chown postgres /tmp/pw
    runuser -u postgres -- initdb -D "$data" -U "$POSTGRES_USER" --pwfile=/tmp/pw --auth=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm /tmp/pw
    runuser -u postgres -- pg_ctl -D "$data" -o "-c listen_addresses=127.0.0.1 -p ${PGPORT:-5432}" -w start >/dev/null
    runuser -u postgres -- env PGPASSWORD="$POSTGRES_PASSWORD" psql -h 127.0.0.1 -p "${PGPORT:-5432}" -U "$POSTGRES_USER" -d postgres \
        -c "CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null
    runuser -u postgres -- pg_ctl -D "$data" -m fast -w stop >/dev/null
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$data/pg_hba.conf"
fi
exec runuser -u postgres -- postgres -D "$data" -c listen_addresses="${LISTEN_ADDRESSES:-*}" -p "${PGPORT:-5432}"
