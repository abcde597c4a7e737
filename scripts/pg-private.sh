# Sourced by scripts/pg-profiled.sh and scripts/pg-replicated.sh: what running a private
# PostgreSQL server from Debian's binaries needs, whoever runs it.

# PostgreSQL refuses to run as root: as root, run its programs as the `postgres` user.
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# The newest installed PostgreSQL's bin directory (initdb and pg_ctl are not on PATH).
pg_bin_dir() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$bin" ] || { echo "$(basename "$0"): PostgreSQL is not installed (scripts/services.sh installs it)" >&2; exit 1; }
  echo "$bin"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Makes DIR, and as root lets the `postgres` user own it and reach it.
pg_data_parent() {
  local dir=$1
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$dir" postgres
    chown postgres "$dir"
    chmod o+x "$(dirname "$dir")"
  fi
}
