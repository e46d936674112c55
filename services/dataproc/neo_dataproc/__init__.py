"""Neo dataproc service."""
