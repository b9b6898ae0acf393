"""A contract fake of WeChat Pay API v2 Quick Pay (micropay), from pay.weixin.qq.com.

Requests are XML; each must be signed as "安全规范" describes (sorted non-empty ``k=v`` pairs,
``&key=``, MD5 or HMAC-SHA256, upper-case hex) and name the configured appid/mch_id. A wrong
signature is answered ``return_code FAIL`` / ``签名错误``, as WeChat Pay does. Answers are
signed the same way. ``/secapi/`` endpoints need the API client certificate in production; this
fake serves plain HTTP and does not check it (the connector's TLS client is configurable).

The customer's auth_code decides the outcome by its last two digits: 01 success, 02 USERPAYING
until the customer confirms (``confirm``), 03 NOTENOUGH, 04 SYSTEMERROR although the payment
went through, 05 success answered too late (a timeout), 06 USERPAYING forever, 07
AUTHCODEEXPIRE.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from .server import Answer

APP_ID = "wx2421b1c4370ec43b"
MCH_ID = "10000100"
API_KEY = "192006250b4c09247ec02edce69f6a2d"


def sign(params: dict[str, str], key: str, sign_type: str) -> str:
    text = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "sign" and params[k])
    text += f"&key={key}"
    if sign_type == "HMAC-SHA256":
        return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest().upper()
    return hashlib.md5(text.encode()).hexdigest().upper()


def to_xml(params: dict[str, str]) -> bytes:
    root = ET.Element("xml")
    for name, value in params.items():
        ET.SubElement(root, name).text = value
    return ET.tostring(root, encoding="utf-8")


@dataclass
class Order:
    out_trade_no: str
    total_fee: int
    auth_code: str
    transaction_id: str
    trade_state: str  # SUCCESS, USERPAYING, PAYERROR, REVOKED, CLOSED, REFUND
    refunds: dict[str, int] = field(default_factory=dict)


class WeChatPayFake:
    def __init__(
        self,
        *,
        app_id: str = APP_ID,
        mch_id: str = MCH_ID,
        key: str = API_KEY,
        slow_seconds: float = 1.5,
    ) -> None:
        self.lock = threading.RLock()
        self.app_id = app_id
        self.mch_id = mch_id
        self.key = key
        self.slow_seconds = slow_seconds
        self.orders: dict[str, Order] = {}
        self.requests: list[tuple[str, str]] = []
        self.reverse_recall: dict[str, int] = {}
        # When set, answers are signed with this key instead (a forged or corrupted answer).
        self.answer_key: str | None = None
        self._seq = 0

    def confirm(self, out_trade_no: str) -> None:
        """The customer enters the password: a USERPAYING order becomes paid."""
        with self.lock:
            order = self.orders[out_trade_no]
            if order.trade_state == "USERPAYING":
                order.trade_state = "SUCCESS"

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> Answer:
        if b"<!DOCTYPE" in body.upper():
            return self._fail("XML_FORMAT_ERROR")
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            return self._fail("XML格式错误")
        params = {child.tag: (child.text or "") for child in root}
        sign_type = params.get("sign_type", "MD5")
        if sign_type not in ("MD5", "HMAC-SHA256"):
            self.requests.append((path, "sign_type"))
            return self._fail("签名类型错误")
        if params.get("appid") != self.app_id or params.get("mch_id") != self.mch_id:
            self.requests.append((path, "ids"))
            return self._fail("appid和mch_id不匹配")
        if not params.get("nonce_str") or not hmac.compare_digest(
            params.get("sign", ""), sign(params, self.key, sign_type)
        ):
            self.requests.append((path, "signature"))
            return self._fail("签名错误")
        self.requests.append((path, "ok"))
        route = {
            "/pay/micropay": self._micropay,
            "/pay/orderquery": self._orderquery,
            "/secapi/pay/reverse": self._reverse,
            "/secapi/pay/refund": self._refund,
            "/pay/refundquery": self._refundquery,
        }.get(path)
        if route is None:
            return self._fail("接口不存在")
        fields, delay = route(params)
        answer = {
            "return_code": "SUCCESS",
            "return_msg": "OK",
            "appid": self.app_id,
            "mch_id": self.mch_id,
            "nonce_str": secrets.token_hex(16),
            **fields,
        }
        if params.get("sub_mch_id"):
            answer["sub_mch_id"] = params["sub_mch_id"]
        answer["sign"] = sign(answer, self.answer_key or self.key, sign_type)
        return 200, {"content-type": "text/xml; charset=utf-8"}, to_xml(answer), delay

    @staticmethod
    def _fail(message: str) -> Answer:
        body = to_xml({"return_code": "FAIL", "return_msg": message})
        return 200, {"content-type": "text/xml; charset=utf-8"}, body, 0.0

    def _micropay(self, p: dict[str, str]) -> tuple[dict[str, str], float]:
        required = ("body", "out_trade_no", "total_fee", "spbill_create_ip", "auth_code")
        if any(not p.get(name) for name in required) or not p["total_fee"].isdigit():
            return _error("PARAM_ERROR", "参数错误"), 0.0
        existing = self.orders.get(p["out_trade_no"])
        if existing is not None:
            if existing.total_fee != int(p["total_fee"]) or existing.auth_code != p["auth_code"]:
                return _error("OUT_TRADE_NO_USED", "商户订单号重复"), 0.0
            if existing.trade_state == "SUCCESS":
                return _error("ORDERPAID", "订单已支付"), 0.0
            return self._pay_answer(existing), 0.0
        scenario = p["auth_code"][-2:]
        if scenario == "03":
            return _error("NOTENOUGH", "余额不足"), 0.0
        if scenario == "07":
            return _error("AUTHCODEEXPIRE", "二维码已过期，请用户在微信上刷新后再试"), 0.0
        self._seq += 1
        state = "USERPAYING" if scenario in ("02", "06") else "SUCCESS"
        order = Order(
            p["out_trade_no"], int(p["total_fee"]), p["auth_code"], f"4200{self._seq:024d}", state
        )
        self.orders[order.out_trade_no] = order
        if scenario == "04":
            return _error("SYSTEMERROR", "系统超时"), 0.0
        return self._pay_answer(order), self.slow_seconds if scenario == "05" else 0.0

    @staticmethod
    def _pay_answer(order: Order) -> dict[str, str]:
        if order.trade_state == "USERPAYING":
            return _error("USERPAYING", "需要用户输入支付密码")
        if order.trade_state != "SUCCESS":
            return _error("ORDERREVERSED", "订单已撤销")
        return {
            "result_code": "SUCCESS",
            "openid": "oUpF8uN95-Ptaags6E_roPHg7AG0",
            "trade_type": "MICROPAY",
            "total_fee": str(order.total_fee),
            "fee_type": "JPY",
            "transaction_id": order.transaction_id,
            "out_trade_no": order.out_trade_no,
            "time_end": "20260105090000",
        }

    def _orderquery(self, p: dict[str, str]) -> tuple[dict[str, str], float]:
        order = self.orders.get(p.get("out_trade_no", ""))
        if order is None:
            return _error("ORDERNOTEXIST", "此交易订单号不存在"), 0.0
        return {
            "result_code": "SUCCESS",
            "trade_state": order.trade_state,
            "trade_state_desc": order.trade_state.lower(),
            "out_trade_no": order.out_trade_no,
            "transaction_id": order.transaction_id,
            "total_fee": str(order.total_fee),
            "fee_type": "JPY",
        }, 0.0

    def _reverse(self, p: dict[str, str]) -> tuple[dict[str, str], float]:
        ref = p.get("out_trade_no", "")
        if self.reverse_recall.get(ref, 0) > 0:
            self.reverse_recall[ref] -= 1
            return {**_error("SYSTEMERROR", "系统超时"), "recall": "Y"}, 0.0
        order = self.orders.get(ref)
        if order is None:
            return {**_error("ORDERNOTEXIST", "订单不存在"), "recall": "N"}, 0.0
        # Unpaid orders are closed, paid ones given back: both end REVOKED.
        order.trade_state = "REVOKED"
        return {"result_code": "SUCCESS", "recall": "N"}, 0.0

    def _refund(self, p: dict[str, str]) -> tuple[dict[str, str], float]:
        order = self.orders.get(p.get("out_trade_no", ""))
        refund_no = p.get("out_refund_no", "")
        if order is None:
            return _error("ORDERNOTEXIST", "订单不存在"), 0.0
        if not refund_no or not p.get("refund_fee", "").isdigit():
            return _error("PARAM_ERROR", "参数错误"), 0.0
        if p.get("total_fee") != str(order.total_fee):
            return _error("PARAM_ERROR", "订单金额或退款金额与之前请求不一致"), 0.0
        fee = int(p["refund_fee"])
        if refund_no in order.refunds:
            if order.refunds[refund_no] != fee:
                return _error("PARAM_ERROR", "订单金额或退款金额与之前请求不一致"), 0.0
        elif order.trade_state not in ("SUCCESS", "REFUND"):
            return _error("TRADE_STATE_ERROR", "订单状态错误"), 0.0
        elif sum(order.refunds.values()) + fee > order.total_fee:
            return _error("INVALID_REQUEST", "退款金额大于支付金额"), 0.0
        else:
            order.refunds[refund_no] = fee
            order.trade_state = "REFUND"
        return {
            "result_code": "SUCCESS",
            "out_trade_no": order.out_trade_no,
            "out_refund_no": refund_no,
            "refund_id": f"5030{refund_no}",
            "refund_fee": str(fee),
            "total_fee": str(order.total_fee),
        }, 0.0

    def _refundquery(self, p: dict[str, str]) -> tuple[dict[str, str], float]:
        refund_no = p.get("out_refund_no", "")
        for order in self.orders.values():
            if refund_no in order.refunds:
                return {
                    "result_code": "SUCCESS",
                    "out_trade_no": order.out_trade_no,
                    "refund_count": "1",
                    "out_refund_no_0": refund_no,
                    "refund_fee_0": str(order.refunds[refund_no]),
                    "refund_status_0": "SUCCESS",
                }, 0.0
        return _error("REFUNDNOTEXIST", "退款订单查询失败"), 0.0


def _error(code: str, description: str) -> dict[str, str]:
    return {"result_code": "FAIL", "err_code": code, "err_code_des": description}
