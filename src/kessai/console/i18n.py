"""The console's words in Japanese (the default) and English.

Every message has both languages in one line, so a missing translation is visible in review and
caught by a test. Values are ``str.format`` templates; the page escapes the result.
"""

from __future__ import annotations

from typing import Final

LANGS: Final = ("ja", "en")
DEFAULT_LANG: Final = "ja"

# key: (Japanese, English)
MESSAGES: Final[dict[str, tuple[str, str]]] = {
    # -- frame
    "app.console": ("管理画面", "Merchant console"),
    "app.merchant": ("加盟店", "Merchant"),
    "app.footer": (
        "Kessai — 日時はすべて日本時間（JST）です",
        "Kessai — all times are Japan time (JST)",
    ),
    "nav.label": ("メニュー", "Menu"),
    "nav.payments": ("決済一覧", "Payments"),
    "nav.totals": ("日次集計", "Daily totals"),
    "nav.terminals": ("端末", "Terminals"),
    "nav.logout": ("ログアウト", "Log out"),
    "role.owner": ("オーナー", "Owner"),
    "role.staff": ("スタッフ", "Staff"),
    "common.copy": ("コピー", "Copy"),
    # -- login
    "login.title": ("ログイン", "Log in"),
    "login.lead": ("加盟店管理画面にログインしてください。", "Log in to the merchant console."),
    "login.email": ("メールアドレス", "Email"),
    "login.password": ("パスワード", "Password"),
    "login.submit": ("ログイン", "Log in"),
    "login.wrong": (
        "メールアドレスまたはパスワードが正しくありません。",
        "The email or password is not correct.",
    ),
    "login.locked": (
        "ログインの失敗が続いたため、このアカウントは一時的にロックされています。"
        "{minutes}分後にもう一度お試しください。",
        "Too many failed logins: this account is locked for now. Try again in {minutes} minutes.",
    ),
    "login.throttled": (
        "このネットワークからのログインの失敗が多すぎます。{minutes}分後にもう一度お試しください。",
        "Too many failed logins from this network. Try again in {minutes} minutes.",
    ),
    "login.disabled": ("このアカウントは無効になっています。", "This account is disabled."),
    "login.required": ("続けるにはログインしてください。", "Please log in to continue."),
    "login.logged_out": ("ログアウトしました。", "You have logged out."),
    "login.https_hint": (
        "この管理画面の Cookie は Secure です。https で開いていない場合はログインできません。"
        "開発環境では KESSAI_CONSOLE_COOKIE_SECURE=false を設定してください。",
        "This console's cookies are Secure: over plain http you cannot stay logged in. "
        "Use https, or set KESSAI_CONSOLE_COOKIE_SECURE=false on a development machine.",
    ),
    # -- errors
    "error.request_id": ("問い合わせ番号", "Request id"),
    "error.back": ("戻る", "Back"),
    "error.forbidden_title": ("この操作はできません", "Not allowed"),
    "error.owner_only": (
        "この操作はオーナーのみ行えます。",
        "Only an owner can do this.",
    ),
    "error.csrf": (
        "フォームの有効期限が切れたか、正しくない送信です。ページを読み込み直してからやり直してください。",
        "This form has expired or was not sent from this console. Reload the page and try again.",
    ),
    "error.not_found_title": ("見つかりません", "Not found"),
    "error.not_found": ("ページまたは決済が見つかりません。", "No such page or payment."),
    "error.bad_request_title": ("入力内容を確認してください", "Please check the input"),
    "error.internal_title": ("エラーが発生しました", "Something went wrong"),
    "error.internal": (
        "処理中にエラーが発生しました。問い合わせ番号を添えてご連絡ください。",
        "An internal error occurred. Please report it with the request id.",
    ),
    "err.REFUND_EXCEEDS_REMAINING": (
        "返金額が返金可能額を超えています。",
        "The refund is larger than what remains refundable.",
    ),
    "err.PAYMENT_NOT_REFUNDABLE": (
        "この決済は返金できる状態ではありません。",
        "This payment is not in a state that can be refunded.",
    ),
    "err.IDEMPOTENCY_CONFLICT": (
        "同じ返金操作が別の内容ですでに処理されています。画面を読み込み直してください。",
        "This refund was already made with other details. Reload the page.",
    ),
    "err.PAYMENT_NOT_EDITABLE": (
        "支払われなかった決済には伝票番号を設定できません。",
        "A payment that was never paid takes no voucher number.",
    ),
    "err.PAYMENT_NOT_FOUND": ("決済が見つかりません。", "No such payment."),
    "err.NOT_FOUND": ("見つかりません。", "Not found."),
    "err.other": (
        "処理できませんでした（{code}）: {message}",
        "Could not do this ({code}): {message}",
    ),
    # -- payment list
    "payments.title": ("決済一覧", "Payments"),
    "payments.count": ("{total}件", "{total} payments"),
    "payments.csv": ("CSVダウンロード", "Download CSV"),
    "payments.none": ("条件に合う決済はありません。", "No payments match."),
    "filter.search": ("検索", "Search"),
    "filter.search_hint": ("決済番号・transKey・伝票番号", "transId, transKey or voucher no."),
    "filter.dates": ("期間", "Dates"),
    "filter.from": ("開始日", "From"),
    "filter.to": ("終了日", "To"),
    "filter.terminal": ("端末", "Terminal"),
    "filter.service": ("サービス", "Service"),
    "filter.status": ("状態", "Status"),
    "filter.amount": ("金額", "Amount"),
    "filter.min": ("下限金額", "Minimum amount"),
    "filter.max": ("上限金額", "Maximum amount"),
    "filter.all": ("すべて", "All"),
    "filter.apply": ("絞り込む", "Apply"),
    "filter.clear": ("条件をクリア", "Clear"),
    "filter.invalid": (
        "読み取れない条件があったため、その条件は使わずに表示しています。",
        "Some filters could not be read and were left out.",
    ),
    "pager.label": ("ページ", "Pages"),
    "pager.range": ("{total}件中 {first}〜{last}件", "{first}–{last} of {total}"),
    "pager.prev": ("← 前へ", "← Newer"),
    "pager.next": ("次へ →", "Older →"),
    "col.created": ("日時", "Date"),
    "col.trans_id": ("決済番号", "transId"),
    "col.trans_key": ("transKey", "transKey"),
    "col.terminal": ("端末", "Terminal"),
    "col.service": ("サービス", "Service"),
    "col.amount": ("金額", "Amount"),
    "col.refunded": ("返金額", "Refunded"),
    "col.status": ("状態", "Status"),
    "col.voucher": ("伝票番号", "Voucher no."),
    "status.PENDING": ("処理中", "Pending"),
    "status.COMPLETED": ("完了", "Completed"),
    "status.PARTIALLY_REFUNDED": ("一部返金", "Partially refunded"),
    "status.REFUNDED": ("返金済み", "Refunded"),
    "status.FAILED": ("失敗", "Failed"),
    "status.EXPIRED": ("期限切れ", "Expired"),
    "status.CANCELED": ("取消", "Canceled"),
    "pending.WAITING_FOR_CUSTOMER": ("お客様の操作待ち", "waiting for the customer"),
    "pending.OUTCOME_UNKNOWN": ("結果を確認中", "outcome not yet known"),
    # -- one payment
    "payment.title": ("決済", "Payment"),
    "payment.summary": ("概要", "Summary"),
    "payment.kind": ("方式", "Flow"),
    "kind.CUSTOMER_CODE": ("お客様のコードを読み取り", "Customer's code scanned"),
    "kind.MERCHANT_QR": ("店舗のQRコードをお客様が読み取り", "Customer scanned the shop's QR"),
    "payment.refundable": ("返金可能額", "Refundable"),
    "payment.code": ("支払いコード", "Payment code"),
    "payment.failure": ("失敗理由", "Failure"),
    "payment.updated": ("更新日時", "Updated"),
    "payment.voucher_edit": ("伝票番号", "Voucher no."),
    "payment.voucher_save": ("伝票番号を保存", "Save voucher no."),
    "payment.voucher_hint": (
        "半角英数字とハイフン、20文字まで。",
        "Up to 20 letters, digits or hyphens.",
    ),
    "payment.voucher_saved": ("伝票番号を保存しました。", "The voucher number was saved."),
    "payment.voucher_invalid": (
        "伝票番号は半角英数字とハイフンで20文字までです。",
        "A voucher number is 1 to 20 letters, digits or hyphens.",
    ),
    # -- refunds
    "refund.title": ("返金", "Refund"),
    "refund.full": ("全額返金（{amount}）", "Full refund ({amount})"),
    "refund.partial": ("一部返金", "Partial refund"),
    "refund.amount": ("返金額", "Amount to refund"),
    "refund.next": ("返金内容を確認", "Review the refund"),
    "refund.not_refundable": ("この決済は返金できません。", "This payment cannot be refunded."),
    "refund.owner_only": (
        "返金と伝票番号の変更はオーナーのみ行えます。",
        "Only an owner can refund or change the voucher number.",
    ),
    "refund.id": ("返金ID", "Refund id"),
    "refund.when": ("日時", "Date"),
    "refund.by": ("操作", "By"),
    "refund_status.PENDING": ("処理中", "Pending"),
    "refund_status.SUCCEEDED": ("完了", "Succeeded"),
    "refund_status.FAILED": ("失敗", "Failed"),
    "refund.confirm_title": ("返金の確認", "Confirm the refund"),
    "refund.confirm_lead": (
        "以下の内容で返金します。よろしければ「返金する」を押してください。",
        "Check the refund below, then press the refund button.",
    ),
    "refund.this_refund": ("今回の返金額", "This refund"),
    "refund.after": ("返金後の返金可能額", "Refundable afterwards"),
    "refund.irreversible": (
        "返金は取り消せません。金額はお客様のウォレットに返金されます。",
        "A refund cannot be undone. The amount goes back to the customer's wallet.",
    ),
    "refund.back": ("戻る", "Back"),
    "refund.do": ("{amount}を返金する", "Refund {amount}"),
    "refund.done": (
        "{amount}を返金しました（返金ID {refund_id}）。",
        "Refunded {amount} (refund {refund_id}).",
    ),
    "refund.pending": (
        "{amount}の返金を受け付けました。ウォレットの結果を確認中です（返金ID {refund_id}）。",
        "The refund of {amount} was accepted; the wallet's answer is pending (refund {refund_id}).",
    ),
    "refund.failed": (
        "{amount}の返金はウォレットに断られました（返金ID {refund_id}）。",
        "The wallet refused the refund of {amount} (refund {refund_id}).",
    ),
    "refund.amount_invalid": (
        "返金額は1円から{max}までの整数で入力してください。",
        "Enter a whole number of yen from ¥1 to {max}.",
    ),
    # -- history
    "timeline.title": ("履歴", "History"),
    "tl.payment.created": ("決済を作成", "Payment created"),
    "tl.payment.waiting": ("待機中", "Waiting"),
    "tl.payment.completed": ("支払い完了", "Paid"),
    "tl.payment.failed": ("決済失敗", "Payment failed"),
    "tl.payment.expired": ("期限切れ", "Expired"),
    "tl.payment.canceled": ("取消", "Canceled"),
    "tl.payment.updated": ("更新", "Updated"),
    "tl.refund.requested": ("返金を受付", "Refund requested"),
    "tl.refund.succeeded": ("返金完了", "Refund completed"),
    "tl.refund.failed": ("返金失敗", "Refund failed"),
    "tl.payment.voucher_set": ("伝票番号を設定", "Voucher number set"),
    "tl.provider.disagrees": ("ウォレットの記録と不一致", "The wallet disagrees"),
    "actor.terminal": ("端末 {mid}", "Terminal {mid}"),
    "actor.provider": ("ウォレット（{name}）", "Wallet ({name})"),
    "actor.console": ("管理画面 {who}", "Console {who}"),
    "actor.admin": ("管理者（CLI）", "Administrator (CLI)"),
    # -- terminals
    "terminals.title": ("端末", "Terminals"),
    "terminals.count": ("{total}台", "{total} terminals"),
    "terminals.state": ("状態", "State"),
    "terminals.session": ("ログイン", "Session"),
    "terminals.last_seen": ("最終通信", "Last seen"),
    "terminals.locks": ("ロック", "Locks"),
    "terminals.actions": ("操作", "Actions"),
    "terminals.enabled": ("有効", "Enabled"),
    "terminals.disabled": ("無効", "Disabled"),
    "terminals.logged_in": ("ログイン中", "Logged in"),
    "terminals.from_key": ("キー", "key"),
    "terminals.logged_out": ("未ログイン", "Logged out"),
    "terminals.refunds_locked": ("返金ロック中", "Refunds locked"),
    "terminals.login_locked": ("ログインロック中", "Login locked"),
    "terminals.do_logout": ("強制ログアウト", "Force logout"),
    "terminals.do_reset": ("パスワード再発行", "Reset password"),
    "terminals.do_unlock": ("ロック解除", "Unlock"),
    "terminals.do_disable": ("無効にする", "Disable"),
    "terminals.do_enable": ("有効にする", "Enable"),
    "terminals.confirm_logout": (
        "端末 {mid} をログアウトさせますか？",
        "Log terminal {mid} out?",
    ),
    "terminals.confirm_reset": (
        "端末 {mid} のパスワードを再発行しますか？端末はログアウトされます。",
        "Issue a new password for terminal {mid}? The terminal will be logged out.",
    ),
    "terminals.confirm_disable": (
        "端末 {mid} を無効にしますか？決済ができなくなります。",
        "Disable terminal {mid}? It will no longer take payments.",
    ),
    "terminals.owner_only": (
        "端末の操作はオーナーのみ行えます。",
        "Only an owner can manage terminals.",
    ),
    "terminals.none": ("端末はまだありません。", "No terminals yet."),
    "terminals.new_password_title": ("新しいログインパスワード", "New login password"),
    "terminals.new_password": ("パスワード", "Password"),
    "terminals.shown_once": (
        "このパスワードは今回だけ表示されます。控えて端末に設定してください。端末はログアウトされました。",
        "This password is shown only now. Note it and set it on the terminal, "
        "which has been logged out.",
    ),
    "terminals.back": ("端末一覧に戻る", "Back to terminals"),
    "terminals.done.logout": (
        "端末 {mid} をログアウトさせました。",
        "Terminal {mid} was logged out.",
    ),
    "terminals.done.logout_none": (
        "端末 {mid} はログインしていませんでした。",
        "Terminal {mid} was not logged in.",
    ),
    "terminals.done.unlock": (
        "端末 {mid} のロックを解除しました。",
        "Terminal {mid} was unlocked.",
    ),
    "terminals.done.disable": ("端末 {mid} を無効にしました。", "Terminal {mid} was disabled."),
    "terminals.done.enable": ("端末 {mid} を有効にしました。", "Terminal {mid} was enabled."),
    # -- totals
    "totals.title": ("日次集計", "Daily totals"),
    "totals.jst": ("日本時間", "Japan time"),
    "totals.payments": ("決済件数", "Payments"),
    "totals.paid": ("決済金額", "Sales"),
    "totals.refunds": ("返金件数", "Refunds"),
    "totals.refunded": ("返金金額", "Refunded"),
    "totals.net": ("差引", "Net"),
    "totals.n_payments": ("{n}件", "{n} payments"),
    "totals.n_refunds": ("{n}件", "{n} refunds"),
    "totals.net_hint": ("決済金額 − 返金金額", "sales − refunds"),
    "totals.chart": ("日別の推移", "Day by day"),
    "totals.by_day": ("日別", "By day"),
    "totals.by_terminal": ("端末別", "By terminal"),
    "totals.by_service": ("サービス別", "By service"),
    "totals.day": ("日付", "Date"),
    "totals.total": ("合計", "Total"),
    "totals.none": ("この期間のデータはありません。", "Nothing in this period."),
    "totals.invalid": (
        "期間は{days}日以内の日付で指定してください。直近の期間を表示しています。",
        "Choose a period of at most {days} days; showing the latest period instead.",
    ),
    "totals.rules": (
        "決済は作成日（日本時間）に、返金はウォレットが返金を確定した日に計上します。"
        "決済件数・金額は支払い済み（完了・一部返金・返金済み）の決済です。",
        "A payment counts on the day it was made (Japan time), a refund on the day the wallet "
        "confirmed it. Sales count paid payments (completed, partially refunded, refunded).",
    ),
    # -- wallet simulator
    "sim.banner": (
        "テスト環境のウォレットです。実際のお金は動きません。",
        "A test-mode wallet: no real money moves.",
    ),
    "sim.phone_link": ("お客様のスマホ（支払いコード）", "Customer's phone (payment code)"),
    "sim.scan_title": ("QRコードで支払う", "Pay by QR code"),
    "sim.pay_to": ("お支払い先", "Pay to"),
    "sim.expires_in": ("有効期限まで", "Expires in"),
    "sim.password": ("ウォレットのパスワード", "Wallet password"),
    "sim.password_hint": (
        "サンドボックスでは、空でなければどのパスワードでも承認されます。",
        "In the sandbox any non-empty password is accepted.",
    ),
    "sim.password_empty": ("パスワードを入力してください。", "Enter the password."),
    "sim.confirm": ("支払いを確定する", "Confirm payment"),
    "sim.back": ("戻る", "Back"),
    "sim.approve": ("支払う", "Approve"),
    "sim.enter_password": ("パスワードを入力して支払う", "Enter password"),
    "sim.decline": ("支払わない", "Decline"),
    "sim.password_explain": (
        "「パスワードを入力」を選ぶと、確定するまで決済は処理中（お客様の操作待ち）のままです。",
        "With “Enter password” the payment stays pending (waiting for the customer) until "
        "you confirm.",
    ),
    "sim.final.SUCCEEDED": ("お支払いが完了しました", "Payment complete"),
    "sim.final.FAILED": ("お支払いを行いませんでした", "Payment declined"),
    "sim.final.CANCELED": ("この支払いは取り消されました", "This payment was canceled"),
    "sim.final.EXPIRED": ("QRコードの有効期限が切れました", "The QR code has expired"),
    "sim.bad_decision": ("選択が正しくありません。", "Unknown choice."),
    "phone.title": ("お客様のスマホ", "Customer's phone"),
    "phone.subtitle": ("支払いコード（サンドボックス）", "Payment code (sandbox)"),
    "phone.service": ("ウォレット", "Wallet"),
    "phone.outcome": ("このコードで支払ったときの結果", "What happens when this code is paid"),
    "phone.show": ("支払いコードを表示", "Show a payment code"),
    "phone.pick_hint": (
        "POSでバーコードかQRコードを読み取ってください。コードは一度だけ使えます。",
        "Scan the barcode or the QR code at the POS. A code pays once.",
    ),
    "phone.will": ("結果", "Outcome"),
    "phone.barcode_alt": ("支払いコードのバーコード", "Payment code as a barcode"),
    "phone.qr_alt": ("支払いコードのQRコード", "Payment code as a QR code"),
    "phone.refresh_in": ("コード更新まで", "New code in"),
    "phone.code_hint": (
        "スキャナで読み取るか、コードをコピーして kessai-pos pay に渡してください。",
        "Scan it, or copy the code into kessai-pos pay.",
    ),
    "phone.refresh_now": ("コードを更新", "New code now"),
    "phone.confirm_lead": (
        "お店からの支払い依頼です。パスワードを入力して確定してください。",
        "The shop asks for this payment. Enter your password to confirm.",
    ),
    "phone.state.SUCCEEDED": ("お支払いが完了しました", "Payment complete"),
    "phone.state.FAILED": ("お支払いはできませんでした", "The payment did not go through"),
    "phone.state.CANCELED": ("この支払いは取り消されました", "This payment was canceled"),
    "phone.state.EXPIRED": ("この支払いは期限切れです", "This payment expired"),
    "phone.state.USED": ("このコードは使用済みです", "This code has been used"),
    "phone.state.unused": ("このコードはまだ使われていません", "This code has not been used yet"),
    "phone.state.unknown": ("このコードは見つかりません", "Unknown code"),
    "phone.new_code": ("新しい支払いコードを表示", "Show a new payment code"),
    "outcome.success": ("支払い成功", "Paid"),
    "outcome.password": ("パスワード確認後に支払い", "Paid after the customer confirms"),
    "outcome.declined": ("残高不足などで拒否", "Declined (e.g. balance)"),
    "outcome.timeout-success": ("応答遅延のあと支払い済み", "No answer in time, then paid"),
    "outcome.timeout-failure": ("応答遅延のあと失敗", "No answer in time, then failed"),
    "outcome.error": ("ウォレットのシステムエラー", "Wallet system error"),
}


def normalise_lang(value: str | None) -> str:
    """``value`` when it is a language we have, Japanese otherwise."""
    return value if value in LANGS else DEFAULT_LANG


class Translator:
    """Looks up messages in one language: ``t("refund.do", amount="¥300")``."""

    def __init__(self, lang: str) -> None:
        self.lang = normalise_lang(lang)
        self._index = LANGS.index(self.lang)

    def __call__(self, key: str, **values: object) -> str:
        """The message ``key`` in this language, with ``values`` filled in.

        An unknown key is a programmer error and raises KeyError, so that tests catch it.
        """
        text = MESSAGES[key][self._index]
        return text.format(**values) if values else text

    def has(self, key: str) -> bool:
        """Whether ``key`` is a known message (for optional lookups such as error codes)."""
        return key in MESSAGES
