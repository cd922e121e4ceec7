#!/bin/bash
# One Kafka broker+controller of the compose cluster, in the secure profile: clients and
# brokers over SASL_SSL with SCRAM-SHA-512, controllers over mutual TLS, ACLs enforced.
# Passwords come from the mounted credentials folder; the storage is formatted once, with
# the SCRAM users, from a Java argument file of mode 0600 (no password in `ps`).
#   env: NODE_ID, CLUSTER_ID, VOTERS (1@kafka-1:9094,...), CREDENTIALS (folder)
set -euo pipefail
: "${NODE_ID:?}" "${CLUSTER_ID:?}" "${VOTERS:?}" "${CREDENTIALS:?}"
host=$(hostname)
conf=/tmp/kafka-config
umask 077
mkdir -p "$conf"
admin=$(cat "$CREDENTIALS/kafka-admin.password")
client=$(cat "$CREDENTIALS/kafka-tierflow.password")
cat > "$conf/server.properties" <<PROPS
process.roles=broker,controller
node.id=$NODE_ID
controller.quorum.voters=$VOTERS
listeners=SASL_SSL://:9092,CONTROLLER://:9094
advertised.listeners=SASL_SSL://$host:9092
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:SSL,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin";
ssl.keystore.type=PEM
ssl.keystore.location=$CREDENTIALS/server-bundle.pem
ssl.truststore.type=PEM
ssl.truststore.location=$CREDENTIALS/ca.pem
listener.name.controller.ssl.client.auth=required
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:CN=tierflow-services
log.dirs=/var/lib/kafka/data
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
unclean.leader.election.enable=false
auto.create.topics.enable=false
PROPS
if [ ! -f /var/lib/kafka/data/meta.properties ]; then
  printf '%s\n' -cp '/opt/kafka/libs/*' kafka.tools.StorageTool format \
    --cluster-id "$CLUSTER_ID" --config "$conf/server.properties" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=$admin]" \
    --add-scram "SCRAM-SHA-512=[name=tierflow,password=$client]" > "$conf/format.args"
  java "@$conf/format.args"
  rm -f "$conf/format.args"
fi
exec /opt/kafka/bin/kafka-server-start.sh "$conf/server.properties"
