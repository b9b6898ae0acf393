"""The `kessai` command line: serve, migrate, demo, admin and sandbox."""
