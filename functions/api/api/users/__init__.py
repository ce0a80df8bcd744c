"""The Users resource: routes -> service (cache-aside) -> repository (DynamoDB)."""
