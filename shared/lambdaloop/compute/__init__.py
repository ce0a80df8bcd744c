"""CPU-bound work on Lambda: a process pool that needs no /dev/shm (:mod:`.pool`) and the
registry of compute job kinds (:mod:`.kinds`), each split into chunks and reduced."""

__all__ = ["kinds", "pool"]
