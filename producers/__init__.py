"""What puts events into Kafka: the webhook adapter for registry notifications."""

from producers.kafka import KafkaUnavailable, Publisher, ensure_topics
from producers.webhook import WebhookApp

__all__ = ["KafkaUnavailable", "Publisher", "WebhookApp", "ensure_topics"]
