"""What reads Kafka: the per-region replicator and the log consumer."""
