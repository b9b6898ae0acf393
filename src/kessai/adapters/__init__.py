"""Adapters: the database schema, the unit of work and the repository."""
