"""What `kessai demo` seeds and prints: credentials, URLs and one example of each flow."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from sqlalchemy.engine import Connection

from kessai import keys
from kessai.adapters.db import Database
from kessai.clock import system_clock
from kessai.connectors.sandbox import wallets
from kessai.console import users
from kessai.security import hash_secret
from kessai.service import admin

DEMO_KEY = "DEMO-REGISTER-01"
DEMO_CONSOLE_EMAIL = "owner@demo.example"


def seed_and_describe(db: Database, url: str, base: str, key_file: Path | None = None) -> str:
    """Create the demo merchant, integration and terminal; return the text to print.

    ``key_file``: the master key the demo made for itself, which the `kessai` commands of the
    text need too (the database's key for customer codes is sealed with it).
    """
    now = system_clock()

    def seed(conn: Connection) -> tuple[int, str, admin.IssuedTerminal, list[str], list[str]]:
        merchant_id = admin.create_merchant(conn, "Kessai デモ商店", now)
        os_value = admin.create_integration(conn, "Kessai demo POS", now)
        issued = admin.create_terminal(conn, merchant_id, now, name="demo register")
        ok = wallets.issue_codes(conn, "01", "success", 3, now)
        pw = wallets.issue_codes(conn, "21", "password", 1, now)
        return merchant_id, os_value, issued, ok, pw

    merchant_id, os_value, t, ok_codes, pw_codes = db.run_sync(seed)
    # A console owner, so that refunds and terminals can be tried in the browser too.
    console_password = users.new_console_password()
    console_hash = hash_secret(console_password)
    db.run_sync(
        lambda conn: users.create_user(
            conn,
            merchant_id=merchant_id,
            email=DEMO_CONSOLE_EMAIL,
            role="owner",
            password_hash=console_hash,
            now=now,
        )
    )
    # The examples call this very installation of kessai, wherever its virtualenv is.
    kessai = shutil.which("kessai") or str(Path(sys.executable).with_name("kessai"))
    j = "j"
    key_line = (
        ""
        if key_file is None
        else f"\n  export {keys.KEY_FILE_ENV}={key_file}   # the demo's master key, for `kessai`\n"
    )
    return (
        f"""
Kessai demo — gateway with sandbox wallets (test mode: no real money moves)

  database     {url}
  API          {base}/v1
  API docs     {base}/docs        OpenAPI  {base}/openapi.json
  health       {base}/healthz     metrics  {base}/metrics
  console      {base}/console     login {DEMO_CONSOLE_EMAIL}  password {console_password}
  simulator    {base}/sandbox/phone   (the customer's phone: payment codes to scan)
               a GET-QR-CODE's qrData is {base}/sandbox/pay/… (the wallet page: approve/decline)

Demo merchant {merchant_id} "Kessai デモ商店", integration os {os_value}
Terminal:   mid {t.mid}   password {t.password}   passCode {t.passcode}

Try it (in another shell):
{key_line}
  B={base}
  CT='content-type: application/json'
  j() {{ python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }}
  # LOGIN (once; the session lasts until LOGOUT)
  TOKEN=$(curl -s -X POST $B/v1/login -H "$CT" \\
    -d '{{"mid":"{t.mid}","key":"{DEMO_KEY}","password":"{t.password}","os":"{os_value}"}}' \\
    | {j} sessionToken)
  AUTH="Authorization: Bearer $TOKEN"

  # 1. Payment: the customer shows a code (a PayPay sandbox code that succeeds)
  curl -s -w '\\n' -X POST $B/v1/payments -H "$AUTH" -H "$CT" \\
    -d '{{"transKey":"DEMO0001","amount":1200,"code":"{ok_codes[0]}"}}'
  #    IDENTIFY-SCANNED-QR-CODE: which wallet is this code?
  curl -s -w '\\n' -X POST $B/v1/identify -H "$AUTH" -H "$CT" \\
    -d '{{"code":"{ok_codes[1]}"}}'
  #    A WeChat Pay code whose customer must confirm with a password: PENDING, then PAYCHECK
  TID=$(curl -s -X POST $B/v1/payments -H "$AUTH" -H "$CT" \\
    -d '{{"transKey":"DEMO0002","amount":800,"code":"{pw_codes[0]}"}}' | {j} transId)
  {kessai} sandbox approve $TID --database '{url}'
  curl -s -w '\\n' $B/v1/payments/$TID -H "$AUTH"            # PAYCHECK
  curl -s -w '\\n' "$B/v1/payments?transKey=DEMO0002" -H "$AUTH"   # STATUS

  # 2. QR code: the terminal shows a code, the customer scans it
  QR=$(curl -s -X POST $B/v1/qr-codes -H "$AUTH" -H "$CT" \\
    -d '{{"transKey":"DEMO0003","amount":500,"serviceId":"01"}}')
  echo "$QR" | {j} qrData      # open this URL: the sandbox wallet page (Approve / Decline)
  curl -s $B/v1/payments/$(echo "$QR" | {j} transId)/qr.png -H "$AUTH" -o qr.png

  # 3. Refund (CANCEL) with the passCode: partial, then the rest
  PAID=$(curl -s "$B/v1/payments?transKey=DEMO0001" -H "$AUTH" | {j} transId)
  curl -s -w '\\n' -X POST $B/v1/payments/$PAID/refunds -H "$AUTH" -H "$CT" \\
    -d '{{"passCode":"{t.passcode}","amount":200,"refundKey":"R1"}}'
  curl -s -w '\\n' -X POST $B/v1/payments/$PAID/refunds -H "$AUTH" -H "$CT" \\
    -d '{{"passCode":"{t.passcode}","refundKey":"R2"}}'

  # 4. Voucher link: attach the shop's slip number
  curl -s -w '\\n' -X PUT $B/v1/payments/$PAID/voucher -H "$AUTH" -H "$CT" \\
    -d '{{"voucherNo":"SLIP-0001"}}'

  # LOGOUT
  curl -s -w '\\n' -X POST $B/v1/logout -H "$AUTH"

More sandbox codes:  {kessai} sandbox code 01 --outcome declined --database '{url}'
  (outcomes: {", ".join(wallets.OUTCOMES)}; services: {kessai} sandbox services)
""".rstrip()
        + "\n"
    )
