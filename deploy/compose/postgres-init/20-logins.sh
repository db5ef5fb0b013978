#!/bin/sh
# The tradeflow roles' logins (10-roles.sql made the roles): each gets LOGIN and its password from the
# container's environment (deploy/compose/.env). psql reads them with \getenv, so no password is on a
# command line or in a file.
set -eu
for name in RECORDER EXECUTION AUDIT READER; do
    if [ -z "$(printenv "TRADEFLOW_POSTGRES_PASSWORD_$name" || true)" ]; then
        echo "20-logins.sh: TRADEFLOW_POSTGRES_PASSWORD_$name is not set" >&2
        exit 1
    fi
done
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" <<'SQL'
\getenv recorder TRADEFLOW_POSTGRES_PASSWORD_RECORDER
\getenv execution TRADEFLOW_POSTGRES_PASSWORD_EXECUTION
\getenv audit TRADEFLOW_POSTGRES_PASSWORD_AUDIT
\getenv reader TRADEFLOW_POSTGRES_PASSWORD_READER
ALTER ROLE tradeflow_recorder LOGIN PASSWORD :'recorder';
ALTER ROLE tradeflow_execution LOGIN PASSWORD :'execution';
ALTER ROLE tradeflow_audit LOGIN PASSWORD :'audit';
ALTER ROLE tradeflow_reader LOGIN PASSWORD :'reader';
SQL
