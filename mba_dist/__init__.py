"""mba-dist: multi-behavior alignment (MBA, SIGIR 2023) as a distributed trainer."""
__version__ = "0.1.0"
