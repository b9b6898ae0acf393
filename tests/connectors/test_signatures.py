"""Each provider's signature against a worked example computed independently of the code.

PayPay and WeChat Pay publish worked examples with their expected outputs; those literal values
are the oracle. Alipay+ publishes no key pair (RSA keys are private), so the expected signature is
computed here with ``cryptography`` directly from the documented recipe (PKCS#1 v1.5 signatures
are deterministic, so equality is meaningful) and checked against the connector's output.
"""

from __future__ import annotations

import base64
from urllib.parse import quote

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from kessai.connectors.alipayplus import client as alipay
from kessai.connectors.paypay import client as paypay
from kessai.connectors.wechatpay import client as wechat

from .fakes.alipayplus import new_key, private_pem, public_pem

# --- PayPay: "OPA API Authorization", www.paypay.ne.jp/opa/doc/v1.0/api_authorization.html -----

PAYPAY_BODY = (
    b'{"sampleRequestBodyKey1":"sampleRequestBodyValue1",'
    b'"sampleRequestBodyKey2":"sampleRequestBodyValue2"}'
)
PAYPAY_CONTENT_TYPE = "application/json;charset=UTF-8;"


def test_paypay_body_hash_matches_the_documented_example() -> None:
    assert paypay.body_hash(PAYPAY_CONTENT_TYPE, PAYPAY_BODY) == "1j0FnY4flNp5CtIKa7x9MQ=="


def test_paypay_header_matches_the_documented_example() -> None:
    header = paypay.authorization(
        "APIKeyGenerated",
        "APIKeySecretGenerated",
        method="POST",
        path="/v2/codes",
        body=PAYPAY_BODY,
        nonce="acd028",
        epoch=1579843452,
        content_type=PAYPAY_CONTENT_TYPE,
    )
    assert header == (
        "hmac OPA-Auth:APIKeyGenerated:NW1jKIMnzR7tEhMWtcJcaef+nFVBt7jjAGcVuxHhchc=:"
        "acd028:1579843452:1j0FnY4flNp5CtIKa7x9MQ=="
    )


def test_paypay_without_a_body_both_content_type_and_hash_are_empty() -> None:
    header = paypay.authorization(
        "K", "S", method="GET", path="/v2/codes/payments/1", body=None, nonce="n", epoch=1
    )
    parsed = paypay.parse_authorization(header)
    assert parsed is not None
    assert parsed.hash == "empty"
    # The mac covers "path\nmethod\nnonce\nepoch\nempty\nempty" and nothing else.
    assert parsed.mac == paypay.mac("S", "/v2/codes/payments/1\nGET\nn\n1\nempty\nempty")


# --- WeChat Pay v2: "安全规范" / Signature Algorithm, pay.weixin.qq.com ---------------------------

WECHAT_PARAMS = {
    "appid": "wxd930ea5d5a258f4f",
    "mch_id": "10000100",
    "device_info": "1000",
    "body": "test",
    "nonce_str": "ibuaiVcKdpRxkhJA",
}
WECHAT_KEY = "192006250b4c09247ec02edce69f6a2d"


def test_wechat_string_to_sign_matches_the_documented_example() -> None:
    assert wechat.sign_string(WECHAT_PARAMS, WECHAT_KEY) == (
        "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100"
        "&nonce_str=ibuaiVcKdpRxkhJA&key=192006250b4c09247ec02edce69f6a2d"
    )


def test_wechat_md5_sign_matches_the_documented_example() -> None:
    assert wechat.sign(WECHAT_PARAMS, WECHAT_KEY, "MD5") == "9A0A8659F005D6984697E2CA0A9CF3B7"


def test_wechat_hmac_sha256_sign_matches_the_documented_example() -> None:
    assert wechat.sign(WECHAT_PARAMS, WECHAT_KEY, "HMAC-SHA256") == (
        "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
    )


def test_wechat_empty_values_and_the_sign_field_are_left_out() -> None:
    params = {**WECHAT_PARAMS, "attach": "", "sign": "WHATEVER"}
    assert wechat.sign(params, WECHAT_KEY) == "9A0A8659F005D6984697E2CA0A9CF3B7"
    assert wechat.signature_holds(
        {**WECHAT_PARAMS, "sign": "9A0A8659F005D6984697E2CA0A9CF3B7"}, WECHAT_KEY
    )
    assert not wechat.signature_holds({**WECHAT_PARAMS, "sign": "0" * 32}, WECHAT_KEY)


def test_wechat_xml_round_trip_refuses_a_dtd() -> None:
    document = wechat.to_xml({"a": "1 < 2", "b": "x"}).encode()
    assert wechat.parse_xml(document) == {"a": "1 < 2", "b": "x"}
    evil = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "boom">]><xml><a>&e;</a></xml>'
    assert wechat.parse_xml(evil) is None


# --- Alipay+: "Sign a request and validate the signature", docs.alipayplus.com -----------------

ALIPAY_BODY = '{"paymentRequestId":"1234567890","paymentAmount":{"currency":"JPY","value":"100"}}'


def test_alipay_content_to_sign_follows_the_documented_syntax() -> None:
    content = alipay.content_to_sign(
        "POST",
        "/aps/api/v1/payments/pay",
        "TEST_5X00000000000000",
        "2019-05-28T12:12:12+08:00",
        ALIPAY_BODY,
    )
    assert content == (
        "POST /aps/api/v1/payments/pay\n"
        "TEST_5X00000000000000.2019-05-28T12:12:12+08:00." + ALIPAY_BODY
    )


def test_alipay_signature_is_urlencoded_base64_of_sha256_with_rsa() -> None:
    key = new_key()
    content = "POST /aps/api/v1/payments/pay\nC.2019-05-28T12:12:12+08:00." + ALIPAY_BODY
    # The documented recipe, computed directly with cryptography.
    raw = key.sign(content.encode(), padding.PKCS1v15(), hashes.SHA256())
    expected = quote(base64.b64encode(raw).decode(), safe="")
    signature = alipay.sign(alipay.load_private_key(private_pem(key)), content)
    assert signature == expected
    assert "%2B" in expected or "%2F" in expected or "%3D" in expected  # really url-encoded
    public = alipay.load_public_key(public_pem(key))
    assert alipay.verify(public, content, signature)
    assert not alipay.verify(public, content + " ", signature)


def test_alipay_header_and_bare_base64_keys() -> None:
    key = new_key()
    bare = "".join(line for line in private_pem(key).splitlines() if "-----" not in line)
    assert alipay.load_private_key(bare).private_numbers() == key.private_numbers()
    header = alipay.signature_header("1", "abc%2B")
    assert header == "algorithm=RSA256,keyVersion=1,signature=abc%2B"
    assert alipay.parse_signature_header(header) == {
        "algorithm": "RSA256",
        "keyVersion": "1",
        "signature": "abc%2B",
    }
