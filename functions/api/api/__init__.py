"""The HTTP API function: FastAPI behind API Gateway HTTP API, via Mangum."""
