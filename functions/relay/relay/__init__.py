"""The relay function: publishes the work the API stored (the tables' stream outbox)."""
