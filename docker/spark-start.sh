#!/bin/sh
# Start a Spark standalone daemon (master or worker) with authentication and encryption.
# The shared secret is read from a file into Spark's own variable: never on a command line.
#   spark-start.sh master|worker [daemon arguments]
set -eu
: "${SPARK_AUTH_SECRET_FILE:?set SPARK_AUTH_SECRET_FILE to the shared secret's file}"
_SPARK_AUTH_SECRET=$(cat "$SPARK_AUTH_SECRET_FILE")
export _SPARK_AUTH_SECRET
secure="-Dspark.authenticate=true -Dspark.network.crypto.enabled=true"
role=$1
shift
case "$role" in
  master)
    # The REST submission server runs whatever it is sent, unauthenticated: off.
    export SPARK_MASTER_OPTS="$secure -Dspark.master.rest.enabled=false ${SPARK_MASTER_OPTS:-}"
    exec /opt/spark/bin/spark-class org.apache.spark.deploy.master.Master "$@" ;;
  worker)
    export SPARK_WORKER_OPTS="$secure ${SPARK_WORKER_OPTS:-}"
    exec /opt/spark/bin/spark-class org.apache.spark.deploy.worker.Worker "$@" ;;
  *) echo "spark-start.sh: master or worker, not $role" >&2; exit 2 ;;
esac
