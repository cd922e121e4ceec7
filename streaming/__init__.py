"""Entry points of the long-running Kafka consumer daemons."""
