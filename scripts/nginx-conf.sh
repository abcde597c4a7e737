#!/usr/bin/env bash
# Writes the load balancer's configuration: nginx in front of the command APIs on one
# port and the query APIs on another. One file for every place that runs the cluster
# (scripts/cluster.sh, the chaos test's tests::nginx), so what the test proves is what
# the script runs.
#
#   scripts/nginx-conf.sh DIR COMMANDS_PORT QUERIES_PORT "COMMAND_API_ADDRS" "QUERY_API_ADDRS"
#
# writes DIR/nginx.conf (temporary files, pid and logs under DIR too); the addresses are
# host:port, separated by spaces. Run it with `nginx -p DIR -e DIR/error.log -c DIR/nginx.conf`.
#
# A failed upstream leaves the rotation for 5 s. A POST that reached an upstream is
# never passed to another (nginx's rule for non-idempotent methods): the client retries
# it with its Idempotency-Key. A GET may be. nginx's own 502/504 (no upstream answered)
# are problem+json 503s, as every error of the processes behind it is.
set -euo pipefail
[ $# -eq 5 ] || { echo "usage: $0 DIR COMMANDS_PORT QUERIES_PORT COMMAND_API_ADDRS QUERY_API_ADDRS" >&2; exit 2; }
dir=$1 commands_port=$2 queries_port=$3 command_apis=$4 query_apis=$5
mkdir -p "$dir"

upstream() { # name addresses
  echo "  upstream $1 {"
  for address in $2; do echo "    server $address max_fails=1 fail_timeout=5s;"; done
  echo "    keepalive 32;"
  echo "  }"
}

cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  access_log $dir/access.log;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  client_max_body_size 1m;
$(upstream commands "$command_apis")
$(upstream queries "$query_apis")
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host \$host;
  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
  proxy_connect_timeout 1s;
  proxy_read_timeout 30s;
  server {
    listen 127.0.0.1:$commands_port;
    location / {
      proxy_pass http://commands;
      proxy_next_upstream error timeout http_502;
    }
    error_page 502 504 =503 @unavailable;
    location @unavailable {
      default_type application/problem+json;
      add_header Retry-After 1 always;
      return 503 '{"type":"https://eventledger.dev/problems/unavailable","title":"No command API instance answered","status":503,"detail":"retry with the same Idempotency-Key"}';
    }
  }
  server {
    listen 127.0.0.1:$queries_port;
    location / {
      proxy_pass http://queries;
      proxy_next_upstream error timeout http_502 http_503;
    }
    # Server-Sent Events: passed on as they come, open for as long as the client stays.
    location ~ ^/(audit/events/live|console/audit/live) {
      proxy_pass http://queries;
      proxy_buffering off;
      proxy_read_timeout 1h;
    }
    error_page 502 504 =503 @unavailable;
    location @unavailable {
      default_type application/problem+json;
      add_header Retry-After 1 always;
      return 503 '{"type":"https://eventledger.dev/problems/unavailable","title":"No query API instance answered","status":503}';
    }
  }
}
CONF
