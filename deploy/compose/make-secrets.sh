#!/usr/bin/env bash
# Writes the secret files compose.yaml reads (deploy/compose/secrets/, ignored by git),
# each random, keeping any that exist. Run once before `docker compose up`.
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/secrets"
mkdir -p "$dir"
chmod 0700 "$dir"
umask 077

write_once() { # name, then the command that prints its value
    local name=$1
    shift
    if [ ! -s "$dir/$name" ]; then
        "$@" > "$dir/$name"
    fi
}
random() { openssl rand -hex 24; }

write_once auth_jwt_secret openssl rand -base64 48
write_once pii_master_key openssl rand -base64 32
write_once postgres_password random
write_once replication_password random
write_once reader_password random
write_once grafana_admin_password random
write_once database_url printf 'postgres://eventledger:%s@postgres-primary:5432/eventledger' \
    "$(cat "$dir/postgres_password")"
write_once reader_database_url printf 'postgres://eventledger_reader:%s@postgres-replica:5432/eventledger' \
    "$(cat "$dir/reader_password")"
echo "secrets in $dir"
