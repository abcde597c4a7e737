#!/bin/sh
# The image's entrypoint: reads secrets from files, then runs the given process.
#
# For each secret setting (AUTH_JWT_SECRET, AUTH_JWT_PUBLIC_KEY, PII_MASTER_KEY,
# DATABASE_URL, QUERY_API_READER_DATABASE_URL), VAR_FILE=/run/secrets/x sets VAR to
# that file's content (a trailing newline dropped), so a secret is mounted as a file
# (compose `secrets:`, a Kubernetes Secret volume) and never written into the
# environment of a compose file or a manifest. Setting both VAR and VAR_FILE is an error.
set -eu

for name in AUTH_JWT_SECRET AUTH_JWT_PUBLIC_KEY PII_MASTER_KEY DATABASE_URL QUERY_API_READER_DATABASE_URL; do
    file_variable="${name}_FILE"
    eval "file=\${${file_variable}:-}"
    eval "value=\${${name}:-}"
    if [ -n "$file" ]; then
        if [ -n "$value" ]; then
            echo "eventledger-entrypoint: set ${name} or ${file_variable}, not both" >&2
            exit 64
        fi
        if [ ! -r "$file" ]; then
            echo "eventledger-entrypoint: ${file_variable}=${file} is not a readable file" >&2
            exit 66
        fi
        value=$(cat "$file")
        export "${name}=${value}"
        unset "${file_variable}"
    fi
done

exec "$@"
