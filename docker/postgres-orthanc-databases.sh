#!/bin/sh
# Run once by the postgres image when its volume is first initialised
# (/docker-entrypoint-initdb.d): the databases of orthanc-raw's and orthanc-anon's index, each
# owned by a role of its own whose password comes from the environment (never from a file here).
# The same layout as the local stack's (stack/postgres.py, ensure_databases).
set -eu
for name in orthanc_raw orthanc_anon; do
  case "$name" in
    orthanc_raw) password="$PIXL_ORTHANC_RAW_DB_PASSWORD" ;;
    orthanc_anon) password="$PIXL_ORTHANC_ANON_DB_PASSWORD" ;;
  esac
  psql -v ON_ERROR_STOP=1 -v name="$name" -v password="$password" \
    --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
SQL
done
