"""The compute function: CPU chunks of compute jobs, in a process pool."""
