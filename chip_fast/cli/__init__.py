"""The ``chip-fast`` command line."""
from .app import main

__all__ = ["main"]
