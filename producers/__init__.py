"""What puts events into Kafka: the webhook adapter for registry notifications, replica changes, backfills."""

from producers.webhook import WebhookApp, serve_webhook

__all__ = ["WebhookApp", "serve_webhook"]
