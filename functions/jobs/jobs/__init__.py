"""The jobs function: runs fetch jobs (many URLs, fetched concurrently), in parts."""
