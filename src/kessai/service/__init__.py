"""Service functions: one per operation, each a few units of work around provider calls."""
