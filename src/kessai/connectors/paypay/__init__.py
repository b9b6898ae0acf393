"""PayPay (Open Payment API): HTTP plumbing and signing in ``client``, wire types in ``wire``."""

from kessai.connectors.paypay.client import PayPayClient
from kessai.connectors.paypay.connector import PayPayConnector

__all__ = ["PayPayClient", "PayPayConnector"]
