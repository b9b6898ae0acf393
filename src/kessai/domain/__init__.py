"""The pure domain: payments, refunds, their state machine, limits and code identification.

Nothing in this package imports a framework, a database driver or does I/O.
"""
