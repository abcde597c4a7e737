#!/bin/bash
# The replica's entrypoint: on first start, copies the primary with pg_basebackup (which
# also writes standby.signal and primary_conninfo), then runs as a hot standby that the
# query API reads from (QUERY_API_READER_DATABASE_URL).
set -euo pipefail
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    export PGPASSWORD
    PGPASSWORD=$(cat "$REPLICATION_PASSWORD_FILE")
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA"
    pg_basebackup --host "$PRIMARY_HOST" --username replicator --pgdata "$PGDATA" \
        --wal-method stream --write-recovery-conf --progress
    unset PGPASSWORD
fi
exec postgres -c hot_standby=on
