#!/bin/sh
# MinIO with the generated root keys, read from the credentials volume into the server's
# environment (never its command line); the web console is off.
#   env: CREDENTIALS
set -eu
MINIO_ROOT_USER=tierflow-admin
MINIO_ROOT_PASSWORD=$(cat "$CREDENTIALS/minio-admin.password")
MINIO_BROWSER=off
export MINIO_ROOT_USER MINIO_ROOT_PASSWORD MINIO_BROWSER
exec minio server /data --address :9000 --quiet
