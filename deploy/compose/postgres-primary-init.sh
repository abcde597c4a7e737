#!/bin/bash
# Runs once, when the primary's data directory is first created (the postgres image's
# /docker-entrypoint-initdb.d): a replication role for the replica, and the query API's
# read-only role with a password (the migrations grant it its rights; they create it
# only where it does not exist yet).
set -euo pipefail
replication_password=$(cat "$REPLICATION_PASSWORD_FILE")
reader_password=$(cat "$READER_PASSWORD_FILE")
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v replication_password="$replication_password" -v reader_password="$reader_password" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'replication_password';
CREATE ROLE eventledger_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD :'reader_password';
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
