"""Alipay+ (acquirer, User-presented Mode): signing in ``client``, wire types in ``wire``."""

from kessai.connectors.alipayplus.client import AlipayPlusClient
from kessai.connectors.alipayplus.connector import AlipayPlusConnector

__all__ = ["AlipayPlusClient", "AlipayPlusConnector"]
