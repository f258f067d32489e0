"""Detection core: plain Python on event time, no Kafka."""
