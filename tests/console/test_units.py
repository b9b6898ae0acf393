"""The console's pure parts, without a server: barcode, words, formats, cookies, CSV, chart."""

from __future__ import annotations

import csv
import io
import re
import string
from datetime import UTC, date, datetime
from importlib.resources import files

import pytest
import zxingcpp
from PIL import Image

from kessai.console import barcode, charts, formats, i18n, views
from kessai.console.config import ConsoleConfig, cookie_secure_default
from kessai.console.queries import PaymentRow, Sums
from kessai.console.render import ENV


def _raster(text: str, scale: int = 3) -> Image.Image:
    bits = barcode.modules(text)
    image = Image.new("L", (len(bits) * scale, 50), 255)
    for index, bar in enumerate(bits):
        if bar:
            image.paste(0, (index * scale, 0, (index + 1) * scale, 50))
    return image


@pytest.mark.parametrize(
    "text", ["900081818845855642567638", "12345", "7", "28", "Kessai-42 ok", "~!{}"]
)
def test_code_128_is_read_back_by_a_scanner(text: str) -> None:
    found = zxingcpp.read_barcodes(_raster(text))
    assert [(f.format, f.text) for f in found] == [(zxingcpp.BarcodeFormat.Code128, text)]


def test_code_128_packs_digits_two_to_a_symbol() -> None:
    # Start C, six pairs, check, stop: 9 symbols for 12 digits.
    assert len(barcode.symbols("123456789012")) == 9
    assert barcode.symbols("12")[0] == barcode.START_C
    assert barcode.symbols("A1")[0] == barcode.START_B
    assert all(sum(map(int, p)) == 11 for p in barcode._PATTERNS[:-1])
    svg = barcode.svg("1234")
    assert svg.startswith("<svg") and svg.count("<rect") > 5


@pytest.mark.parametrize("bad", ["", "é", "a" * 81, "tab\there"])
def test_code_128_refuses_what_it_cannot_hold(bad: str) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        barcode.symbols(bad)


def test_every_message_has_both_languages_with_the_same_placeholders() -> None:
    field = re.compile(r"{(\w+)}")
    for key, (ja, en) in i18n.MESSAGES.items():
        assert ja.strip() and en.strip(), key
        assert sorted(field.findall(ja)) == sorted(field.findall(en)), key


def test_every_message_a_template_asks_for_exists() -> None:
    used: set[str] = set()
    folders = [
        files("kessai") / "console" / "templates",
        files("kessai") / "console" / "templates" / "sandbox",
        files("kessai") / "api" / "templates",
    ]
    for folder in folders:
        for entry in folder.iterdir():
            if entry.name.endswith(".html"):
                used |= set(re.findall(r"""t\(\s*["']([\w.\-]+)["']""", entry.read_text()))
    assert used, "no messages found in the templates"
    # A key ending in "." is a prefix completed at run time (checked below).
    assert sorted(k for k in used - set(i18n.MESSAGES) if not k.endswith(".")) == []
    # Keys built at run time from a prefix: every value they can take has a message.
    for prefix, values in {
        "status.": (
            "PENDING",
            "COMPLETED",
            "PARTIALLY_REFUNDED",
            "REFUNDED",
            "FAILED",
            "EXPIRED",
            "CANCELED",
        ),
        "outcome.": (
            "success",
            "password",
            "declined",
            "timeout-success",
            "timeout-failure",
            "error",
        ),
        "sim.final.": ("SUCCEEDED", "FAILED", "CANCELED", "EXPIRED"),
        "phone.state.": ("SUCCEEDED", "FAILED", "CANCELED", "EXPIRED", "USED", "unused", "unknown"),
        "refund_status.": ("PENDING", "SUCCEEDED", "FAILED"),
        "role.": ("owner", "staff"),
        "kind.": ("CUSTOMER_CODE", "MERCHANT_QR"),
    }.items():
        for value in values:
            assert prefix + value in i18n.MESSAGES


def test_templates_escape_everything() -> None:
    assert ENV.autoescape is True
    rendered = ENV.from_string("{{ v }}").render(v="<script>x</script>")
    assert rendered == "&lt;script&gt;x&lt;/script&gt;"


def test_unknown_language_falls_back_to_japanese() -> None:
    assert i18n.Translator("fr")("nav.payments") == "決済一覧"
    assert i18n.Translator("en")("nav.payments") == "Payments"
    assert i18n.normalise_lang(None) == "ja"


def test_money_and_time_are_written_the_japanese_way() -> None:
    assert formats.yen(1234) == "¥1,234"
    assert formats.yen(0) == "¥0"
    assert formats.yen(-1500) == "-¥1,500"
    assert formats.yen(9_999_999) == "¥9,999,999"
    # 15:30 UTC is half past midnight the next day in Japan.
    moment = datetime(2026, 1, 31, 15, 30, 5, tzinfo=UTC)
    assert formats.jst(moment) == "2026/02/01 00:30:05"
    assert formats.jst_today(moment) == date(2026, 2, 1)
    assert formats.jst_midnight(date(2026, 2, 1)) == datetime(2026, 1, 31, 15, 0, tzinfo=UTC)
    assert formats.jst(None) == ""


@pytest.mark.parametrize(
    ("url", "secure"),
    [
        ("http://127.0.0.1:8000", False),
        ("http://localhost:8000", False),
        ("http://[::1]:8000", False),
        ("https://127.0.0.1", True),
        ("http://shop.example", True),
        ("https://pay.example.jp", True),
    ],
)
def test_cookies_are_secure_except_on_local_http(url: str, secure: bool) -> None:
    assert cookie_secure_default(url) is secure
    assert ConsoleConfig.from_env(url, {}).cookie_secure is secure


def test_the_cookie_flag_and_limits_can_be_set() -> None:
    config = ConsoleConfig.from_env(
        "https://pay.example.jp",
        {"KESSAI_CONSOLE_COOKIE_SECURE": "false", "KESSAI_CONSOLE_PAGE_SIZE": "20"},
    )
    assert (config.cookie_secure, config.page_size) == (False, 20)
    assert ConsoleConfig.from_env(
        "http://127.0.0.1:8000", {"KESSAI_CONSOLE_COOKIE_SECURE": "true"}
    ).cookie_secure
    with pytest.raises(ValueError, match="KESSAI_CONSOLE_PAGE_SIZE must be more than 0"):
        ConsoleConfig.from_env("http://x.example", {"KESSAI_CONSOLE_PAGE_SIZE": "0"})


def _row(**changes: object) -> PaymentRow:
    values: dict[str, object] = {
        "trans_id": "1234567890",
        "trans_key": "K1",
        "kind": "CUSTOMER_CODE",
        "created_at": datetime(2026, 1, 31, 15, 30, tzinfo=UTC),
        "mid": "1" * 16,
        "terminal_name": "レジ1",
        "service_id": "01",
        "amount": 1500,
        "refunded_amount": 200,
        "status": "PARTIALLY_REFUNDED",
        "pending_reason": None,
        "voucher_no": None,
    }
    values.update(changes)
    return PaymentRow(**values)  # type: ignore[arg-type]


def test_the_csv_has_a_bom_crlf_plain_numbers_and_no_formulas() -> None:
    body = views.payments_csv(
        i18n.Translator("ja"), "ja", [_row(voucher_no="-1+2", terminal_name="=HYPERLINK(1)")]
    )
    assert body.startswith(b"\xef\xbb\xbf")
    text = body.decode("utf-8-sig")
    assert "\r\n" in text
    header, row = list(csv.reader(io.StringIO(text)))
    record = dict(zip(header, row, strict=True))
    assert record["金額"] == "1500" and record["返金額"] == "200"
    assert record["日時（日本時間）"] == "2026/02/01 00:30:00"
    assert record["状態"] == "一部返金" and record["ステータス"] == "PARTIALLY_REFUNDED"
    assert record["伝票番号"] == "'-1+2"
    assert record["端末名"] == "'=HYPERLINK(1)"
    english = views.payments_csv(i18n.Translator("en"), "en", [_row()]).decode("utf-8-sig")
    assert english.startswith("Date (JST),transId,transKey")


def test_the_chart_scales_to_round_numbers() -> None:
    assert charts.nice_step(0) == 1
    assert charts.nice_step(3500) == 1000
    assert charts.nice_step(120_000) == 50_000
    days = [(date(2026, 1, d), Sums(1, d * 1000, 0, 0)) for d in range(1, 11)]
    chart = charts.daily_chart(days, {"paid": "paid", "refunded": "refunded", "net": "net"})
    assert len(chart.bars) == 20
    tallest = max(chart.bars, key=lambda bar: bar.height)
    assert tallest.title.endswith("¥10,000")
    assert min(tick.y for tick in chart.ticks) <= tallest.y
    assert chart.ticks[0].label == "¥0"
    assert all(set(p) <= set(string.digits + ".,") for p in chart.net_points.split())
