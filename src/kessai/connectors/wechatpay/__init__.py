"""WeChat Pay v2 Quick Pay (micropay): XML and signing in ``client``, wire mapping in ``wire``."""

from kessai.connectors.wechatpay.client import WeChatPayClient
from kessai.connectors.wechatpay.connector import WeChatPayConnector

__all__ = ["WeChatPayClient", "WeChatPayConnector"]
