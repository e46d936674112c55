"""Neo trainer service."""
