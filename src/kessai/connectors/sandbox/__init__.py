"""The sandbox wallets: one simulated wallet per catalog service, with its own books."""

from kessai.connectors.sandbox.wallets import OUTCOMES, SandboxWallets

__all__ = ["OUTCOMES", "SandboxWallets"]
