"""Neo serving service."""
