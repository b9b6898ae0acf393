"""Kessai: an open-source QR-code payment gateway for shop terminals and smartphone wallets."""

__version__ = "0.1.0"
