"""Jobs: POST /jobs/fetch (a fetch job, run by the jobs function), GET /jobs/{id}."""
