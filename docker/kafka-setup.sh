#!/bin/bash
# Once the brokers answer: the tierflow user's ACLs (topics and consumer groups, nothing
# on the cluster) and the topics the daemons read, 3 replicas each.
#   env: BOOTSTRAP, CREDENTIALS, TOPICS (space-separated), PARTITIONS
set -euo pipefail
umask 077
admin=/tmp/admin.properties
cat > "$admin" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(cat "$CREDENTIALS/kafka-admin.password")";
ssl.truststore.type=PEM
ssl.truststore.location=$CREDENTIALS/ca.pem
PROPS
bin=/opt/kafka/bin
until "$bin/kafka-broker-api-versions.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$admin" >/dev/null 2>&1; do
  sleep 2
done
for op in Read Write Create Describe DescribeConfigs; do
  "$bin/kafka-acls.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$admin" --add \
    --allow-principal User:tierflow --operation "$op" --topic '*' >/dev/null
done
for op in Read Describe; do
  "$bin/kafka-acls.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$admin" --add \
    --allow-principal User:tierflow --operation "$op" --group '*' >/dev/null
done
for topic in $TOPICS; do
  "$bin/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$admin" --create \
    --if-not-exists --topic "$topic" --partitions "${PARTITIONS:-6}" --replication-factor 3 \
    --config min.insync.replicas=2
done
rm -f "$admin"
echo "kafka-setup: ACLs for User:tierflow, topics: $TOPICS"
