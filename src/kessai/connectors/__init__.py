"""Wallet provider connectors behind one interface; the sandbox is the default."""
