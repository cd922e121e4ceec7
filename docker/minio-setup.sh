#!/bin/sh
# Once MinIO answers: the tables' bucket, and the `tierflow` user (keys from the
# credentials volume) allowed to read and write that bucket only.
#   env: CREDENTIALS, ENDPOINT (host:port), BUCKET
set -eu
umask 077
# mc reads an alias with its keys from MC_HOST_<alias>, so they stay off command lines.
admin_secret=$(cat "$CREDENTIALS/minio-admin.password")
export MC_HOST_store="http://tierflow-admin:${admin_secret}@${ENDPOINT}"
until mc ready store >/dev/null 2>&1; do sleep 1; done
mc mb --ignore-existing "store/$BUCKET" >/dev/null
policy=/tmp/tierflow-policy.json
cat > "$policy" <<POLICY
{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
   "Resource": ["arn:aws:s3:::$BUCKET"]},
  {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
   "Resource": ["arn:aws:s3:::$BUCKET/*"]}
]}
POLICY
mc admin policy create store tierflow-tables "$policy" >/dev/null
# `mc admin user add` takes the secret as an argument: it is visible only inside this
# short-lived container, which can read the credentials volume anyway.
mc admin user add store "$(cat "$CREDENTIALS/minio-tierflow.id")" \
  "$(cat "$CREDENTIALS/minio-tierflow.password")" >/dev/null
mc admin policy attach store tierflow-tables --user "$(cat "$CREDENTIALS/minio-tierflow.id")" \
  >/dev/null 2>&1 || true  # already attached on a rerun
rm -f "$policy"
echo "minio-setup: bucket $BUCKET, user tierflow with read/write on it"
