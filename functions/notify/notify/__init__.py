"""The notify function: delivers queued notifications (webhook or inbox)."""
