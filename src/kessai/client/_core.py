"""The terminal's operations, written once as generators that yield their I/O.

``Terminal`` and ``AsyncTerminal`` drive the same generators: each yields ``Send`` (an HTTP
request; the driver sends back the ``httpx.Response`` or throws in the ``httpx.TransportError``)
and ``Sleep`` (a pause between retries or polls). Journal writes are local and fast, so they run
inline. The rules that matter — journal before sending, the same transKey on every retry, never
"declined" without the gateway's word — therefore exist exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol, TypeVar

import httpx

from kessai import __version__
from kessai.client import journal as j
from kessai.client._crash import crash_point
from kessai.client.config import TerminalConfig
from kessai.client.exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    GatewayError,
    InvalidRequest,
    JournalError,
    NetworkError,
    OutcomeUnknown,
    PaymentNotFound,
    PermissionDenied,
    ProtocolError,
    RateLimited,
    RequestTimeout,
    ServerError,
    SessionExpired,
    TerminalError,
    TransportError,
    error_class_for,
)
from kessai.client.journal import Journal, JournalEntry, JournalRefund
from kessai.client.keys import is_valid_trans_key, new_trans_key
from kessai.client.models import (
    Identification,
    Payment,
    PaymentKind,
    PendingReason,
    RefundStatus,
    Session,
)
from kessai.client.recovery import RecoveredPayment, RecoveredRefund, RecoveryReport

log = logging.getLogger("kessai.client")
T = TypeVar("T")

USER_AGENT: Final = f"kessai-terminal/{__version__}"
MIN_AMOUNT_YEN: Final = 1
MAX_AMOUNT_YEN: Final = 9_999_999
MAX_CODE_LENGTH: Final = 512
_DIGITS: Final = {
    "transId": re.compile(r"[0-9]{10}"),
    "serviceId": re.compile(r"[0-9]{2}"),
    "passCode": re.compile(r"[0-9]{4}"),
}
_VOUCHER: Final = re.compile(r"[A-Za-z0-9\-]{1,20}")


@dataclass(frozen=True, slots=True)
class Send:
    """Effect: send one HTTP request; the driver answers the ``httpx.Response``."""

    method: str
    url: str
    headers: Mapping[str, str]
    json: Any = None
    params: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Sleep:
    """Effect: pause (between retries, or between polls)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Renew:
    """Effect: a session is needed, because ``stale`` ended (None: there is none yet).

    The driver runs ``Core.renew(stale)`` one at a time per terminal (under its login lock), so
    concurrent calls whose session ended log in once, not over each other.
    """

    stale: str | None


Effect = Send | Sleep | Renew
Flow = Generator[Effect, Any, T]


@dataclass(slots=True)
class _Attempts:
    """What happened to the attempts of one call."""

    tries: int = 0  # requests handed to the network
    maybe_sent: bool = False  # whether any of them may have reached the gateway


@dataclass(frozen=True, slots=True)
class _Answer:
    data: Any
    headers: httpx.Headers = field(repr=False)

    @property
    def replayed(self) -> bool:
        return str(self.headers.get("idempotent-replayed", "")).lower() == "true"


def mask_code(code: str) -> str:
    """A customer code as the journal keeps it: first four and last two characters.

    The same masking as the gateway's; the code itself is a one-time secret and never written.
    """
    if len(code) <= 8:
        return "*" * len(code)
    return f"{code[:4]}{'*' * min(len(code) - 6, 26)}{code[-2:]}"


def _invalid(field_name: str, message: str) -> InvalidRequest:
    """The error the gateway would answer, raised before anything is journaled or sent."""
    return InvalidRequest(message, code="INVALID_FIELD", status_code=400, field=field_name)


def _check_amount(amount: int, field_name: str = "amount") -> None:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise _invalid(field_name, f"{field_name} must be an integer number of yen")
    if not MIN_AMOUNT_YEN <= amount <= MAX_AMOUNT_YEN:
        raise _invalid(
            field_name, f"{field_name} must be {MIN_AMOUNT_YEN} to {MAX_AMOUNT_YEN:,} yen"
        )


def _check_digits(name: str, value: str) -> None:
    if not isinstance(value, str) or not _DIGITS[name].fullmatch(value):
        width = {"transId": 10, "serviceId": 2, "passCode": 4}[name]
        raise _invalid(name, f"{name} must be {width} digits")


def _check_trans_key(value: str, name: str = "transKey") -> None:
    if not isinstance(value, str) or not is_valid_trans_key(value):
        raise _invalid(name, f"{name} must be 1 to 34 letters or digits")


def _transport_error(exc: httpx.TransportError | httpx.DecodingError) -> TransportError:
    """The most specific error of ours for an httpx transport failure.

    A body that cannot be decoded (``httpx.DecodingError``: a broken gzip stream) is an answer
    lost on the way, as a broken connection is: the request may have been acted on.
    """
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    # A connect failure or a pool timeout happens before any byte of the request is written.
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return ConnectError(f"cannot reach the gateway ({text})")
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeout(f"the gateway did not answer in time ({text})")
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return NetworkError(f"the connection to the gateway broke ({text})")
    return ProtocolError(f"the exchange with the gateway failed ({text})")


def _gateway_error(response: httpx.Response) -> GatewayError:
    """The gateway's error envelope as the most specific error class; tolerant of non-envelopes."""
    status = response.status_code
    detail: Mapping[str, Any] = {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        detail = body["error"]
    code = detail.get("code") if isinstance(detail.get("code"), str) else None
    code = code or ("INTERNAL_ERROR" if status >= 500 else f"HTTP_{status}")
    message = detail.get("message")
    if not isinstance(message, str):
        message = f"the gateway answered HTTP {status}"
    flag = detail.get("retryable")
    # Without an envelope (a proxy's error page), 5xx and 429 are worth another try.
    retryable = flag if isinstance(flag, bool) else (status >= 500 or status == 429)
    retry_after: float | None = None
    header = response.headers.get("retry-after")
    if header is not None:
        try:
            retry_after = max(0.0, float(header))
        except ValueError:
            retry_after = None
    field_name = detail.get("field")
    request_id = detail.get("requestId") or response.headers.get("x-request-id")
    return error_class_for(code, status)(
        message,
        code=code,
        status_code=status,
        field=field_name if isinstance(field_name, str) else None,
        retryable=retryable,
        request_id=request_id if isinstance(request_id, str) else None,
        retry_after_s=retry_after,
    )


def _worth_retrying(error: TerminalError) -> bool:
    """Tell whether an error is worth the same request again.

    Only connection errors, timeouts, 5xx and 429 are; every call we make is idempotent (reads,
    PUT, or a request carrying its transKey/refundKey), so retrying those is safe.
    """
    if isinstance(error, TransportError):
        return True
    return isinstance(error, ServerError | RateLimited) and error.retryable


class Core:
    """The state a terminal keeps between calls, and its operations as generators."""

    def __init__(
        self,
        config: TerminalConfig,
        journal: Journal,
        *,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.journal = journal
        self.base_url = config.base_url.rstrip("/")
        self.device_key = config.device_key
        # Jitter only needs to differ between registers; it protects nothing secret.
        self._rng = rng or random.Random()  # noqa: S311
        self._monotonic = monotonic
        session = journal.load_session(self.base_url, config.mid, self.device_key)
        self.token: str | None = session.token if session else None
        self.recovered = False

    # -- one call, with retries and at most one re-login ----------------------------------------

    def _retry_delay(self, error: TerminalError, tries: int, started: float) -> float | None:
        policy = self.config.retry
        if tries >= policy.max_attempts or not _worth_retrying(error):
            return None
        delay = policy.backoff_s(tries, self._rng.random())
        if isinstance(error, GatewayError) and error.retry_after_s is not None:
            if error.retry_after_s > policy.max_delay_s:
                return None  # a lock of minutes (LOGIN_LOCKED): waiting here helps nobody
            delay = max(delay, error.retry_after_s)
        if self._monotonic() - started + delay > policy.max_elapsed_s:
            return None
        return delay

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
        relogin: bool = True,
        attempts: _Attempts | None = None,
        before_send: Callable[[], None] | None = None,
    ) -> Flow[_Answer]:
        """Send one request until it is answered, retrying what is safe to retry.

        ``before_send`` runs before every attempt (the journal's "may be sent" mark), so the
        journal never lags behind the network.
        """
        state = attempts if attempts is not None else _Attempts()
        started = self._monotonic()
        # Two at most: the first may take a session another call or process opened meanwhile;
        # if that one has ended too, the second logs in.
        renewals = 0
        while True:
            headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
            token: str | None = None
            if auth:
                token = yield from self._session_token()
                headers["Authorization"] = f"Bearer {token}"
            if before_send is not None:
                before_send()
            state.tries += 1
            error: TerminalError
            try:
                response = yield Send(method, self.base_url + path, headers, body, params)
            except (httpx.TransportError, httpx.DecodingError) as exc:
                error = _transport_error(exc)
                error.__cause__ = exc
                state.maybe_sent = state.maybe_sent or not isinstance(error, ConnectError)
            else:
                if response.is_success:
                    try:
                        return _Answer(response.json(), response.headers)
                    except ValueError:
                        state.maybe_sent = True
                        error = ProtocolError("the gateway's answer is not JSON")
                else:
                    error = _gateway_error(response)
                    # A 4xx answer changed nothing (docs/errors.md); a 5xx may have.
                    state.maybe_sent = state.maybe_sent or response.status_code >= 500
                    if isinstance(error, SessionExpired) and auth and relogin and renewals < 2:
                        renewals += 1
                        log.info("the session ended (%s); logging in again", error.code)
                        yield Renew(token)
                        continue
            delay = self._retry_delay(error, state.tries, started)
            if delay is None:
                raise error
            log.warning(
                "%s %s failed (%s); retry %d in %.2f s", method, path, error, state.tries, delay
            )
            yield Sleep(delay)

    # -- sessions --------------------------------------------------------------------------------

    def _session_token(self) -> Flow[str]:
        if self.token is None:
            yield Renew(None)
        if self.token is None:
            raise AuthenticationError(
                "no session after LOGIN", code="SESSION_REQUIRED", status_code=401
            )
        return self.token

    def login(self) -> Flow[Session]:
        """LOGIN: open a session and keep it in the journal."""
        config = self.config
        body = {
            "mid": config.mid,
            "key": self.device_key,
            "password": config.password,
            "os": config.os,
        }
        answer = yield from self._call("POST", "/v1/login", body=body, auth=False)
        session = Session.from_wire(answer.data)
        self.token = session.token
        self.journal.save_session(self.base_url, config.mid, self.device_key, session)
        return session

    def renew(self, stale: str | None) -> Flow[None]:
        """Have a session other than ``stale`` (the token that ended; None: there was none).

        Run by the drivers one at a time per terminal. A call that waited while another logged
        in again uses that session; a session in the journal newer than ``stale`` (another
        process of this register logged in) is used before logging in again. LOGIN replaces
        the device's session, so logging in over each other would end each other's.
        """
        if self.token is not None and self.token != stale:
            return
        saved = self.journal.load_session(self.base_url, self.config.mid, self.device_key)
        if saved is not None and saved.token != stale:
            log.info("using the session another process of this register opened")
            self.token = saved.token
            return
        if stale is not None:
            self.journal.clear_session(stale)
        yield from self.login()

    def logout(self) -> Flow[None]:
        """LOGOUT: end the session; a session that already ended is fine."""
        token = self.token
        if token is None:
            return
        # A session that ended already is what LOGOUT wants.
        with contextlib.suppress(SessionExpired):
            yield from self._call("POST", "/v1/logout", relogin=False)
        self.token = None
        self.journal.clear_session(token)

    # -- creating payments -----------------------------------------------------------------------

    def pay(
        self, amount: int, code: str, service_id: str | None, trans_key: str | None
    ) -> Flow[Payment]:
        """REQUEST: charge a customer's code, journaled before it leaves."""
        _check_amount(amount)
        if not isinstance(code, str) or not code.strip() or len(code) > MAX_CODE_LENGTH:
            raise _invalid("code", f"code must be 1 to {MAX_CODE_LENGTH} characters")
        code = code.strip()
        if service_id is not None:
            _check_digits("serviceId", service_id)
        key = trans_key or new_trans_key()
        _check_trans_key(key)
        body: dict[str, Any] = {"transKey": key, "amount": amount, "code": code}
        if service_id is not None:
            body["serviceId"] = service_id
        self.journal.record_intent(
            trans_key=key,
            mid=self.config.mid,
            kind=PaymentKind.CUSTOMER_CODE,
            amount=amount,
            service_id=service_id,
            code_masked=mask_code(code),
        )
        crash_point("after_intent")
        return (yield from self._create(key, amount, "/v1/payments", body))

    def qr_code(
        self, amount: int, service_id: str, ttl_seconds: int | None, trans_key: str | None
    ) -> Flow[Payment]:
        """GET-QR-CODE: a QR code for the customer to scan, journaled before it leaves."""
        _check_amount(amount)
        _check_digits("serviceId", service_id)
        if ttl_seconds is not None and (isinstance(ttl_seconds, bool) or ttl_seconds <= 0):
            raise _invalid("ttlSeconds", "ttlSeconds must be a positive number of seconds")
        key = trans_key or new_trans_key()
        _check_trans_key(key)
        body: dict[str, Any] = {"transKey": key, "amount": amount, "serviceId": service_id}
        if ttl_seconds is not None:
            body["ttlSeconds"] = ttl_seconds
        self.journal.record_intent(
            trans_key=key,
            mid=self.config.mid,
            kind=PaymentKind.MERCHANT_QR,
            amount=amount,
            service_id=service_id,
            code_masked=None,
        )
        crash_point("after_intent")
        return (yield from self._create(key, amount, "/v1/qr-codes", body))

    def _create(self, key: str, amount: int, path: str, body: Any) -> Flow[Payment]:
        attempts = _Attempts()
        try:
            answer = yield from self._call(
                "POST",
                path,
                body=body,
                attempts=attempts,
                before_send=lambda: self.journal.mark_sent(key),
            )
        except JournalError as exc:
            if not attempts.maybe_sent:
                raise  # no request left: nothing happened
            # An earlier attempt may have reached the gateway; its entry stays SENT.
            raise OutcomeUnknown(
                f"the journal failed ({exc}) after a request for payment {key} may have reached "
                "the gateway; the customer may have been charged — recover() or status() will "
                "tell",
                trans_key=key,
            ) from exc
        except TerminalError as exc:
            self._settle_failure(exc, attempts, lambda *args: self.journal.mark_unsent(key, *args))
            raise OutcomeUnknown(
                f"the gateway's answer to payment {key} was lost ({exc}); the customer may "
                "have been charged — recover() or status() will tell",
                trans_key=key,
            ) from exc
        crash_point("after_send")
        payment = self._payment(answer, key=key)
        # One charge per transKey: the gateway must answer the payment we asked for.
        if payment.trans_key != key or payment.amount != amount:
            raise OutcomeUnknown(
                f"the gateway answered payment {payment.trans_key} ({payment.amount} yen) for "
                f"{key} ({amount} yen)",
                trans_key=key,
            )
        self._remember(payment)
        return payment

    @staticmethod
    def _settle_failure(
        exc: TerminalError,
        attempts: _Attempts,
        mark: Callable[[str, str | None, str | None], object],
    ) -> None:
        """Journal a failed create or refund whose outcome is definite, and raise it again.

        Returns (without journaling) when the outcome is unknown: some attempt may have reached
        the gateway and its answer was lost.
        """
        code = exc.code if isinstance(exc, GatewayError) else type(exc).__name__
        if attempts.tries == 0:
            mark(j.NOT_SENT, code, exc.message)  # failed before sending (LOGIN refused, …)
            raise exc
        if not attempts.maybe_sent:
            # Every attempt either never left or was answered 4xx: nothing changed.
            mark(j.REJECTED if isinstance(exc, GatewayError) else j.NOT_SENT, code, exc.message)
            raise exc

    def _remember(self, payment: Payment) -> None:
        """Journal what the gateway said, without letting a journal failure hide it.

        The gateway's answer is the truth the caller needs (a charged customer must not be
        told "error"). If the journal cannot be written now, its entry stays unresolved on
        disk, and recover() writes the outcome later.
        """
        try:
            self.journal.record_payment(payment)
        except JournalError as exc:
            log.error(
                "payment %s could not be journaled (%s); recover() will", payment.trans_key, exc
            )

    def _payment(self, answer: _Answer, *, key: str | None = None) -> Payment:
        try:
            return Payment.from_wire(answer.data, replayed=answer.replayed)
        except ProtocolError as exc:
            if key is None:
                raise
            raise OutcomeUnknown(
                f"the gateway's answer to payment {key} could not be read ({exc})", trans_key=key
            ) from exc

    # -- reading payments ------------------------------------------------------------------------

    def paycheck(self, trans_id: str) -> Flow[Payment]:
        """PAYCHECK: a payment by transId (the gateway asks the wallet when it is PENDING)."""
        _check_digits("transId", trans_id)
        answer = yield from self._call("GET", f"/v1/payments/{trans_id}")
        payment = self._payment(answer)
        self._remember(payment)
        return payment

    def status(self, trans_key: str) -> Flow[Payment]:
        """STATUS: a payment by the transKey this terminal generated."""
        _check_trans_key(trans_key)
        answer = yield from self._call("GET", "/v1/payments", params={"transKey": trans_key})
        payment = self._payment(answer)
        self._remember(payment)
        return payment

    def wait(
        self,
        trans_id: str,
        timeout_s: float | None,
        on_update: Callable[[Payment], None] | None,
    ) -> Flow[Payment]:
        """Poll PAYCHECK on the configured schedule until the payment is final or time is up.

        Answers the last payment seen (still PENDING when the time ran out). Network trouble
        during the wait is waited out; it raises only when no poll ever succeeded.
        """
        schedule = self.config.poll
        timeout = schedule.timeout_s if timeout_s is None else max(0.0, timeout_s)
        started = self._monotonic()
        deadline = started + timeout
        polls = 0
        last: Payment | None = None
        failure: TerminalError | None = None
        while True:
            try:
                last = yield from self.paycheck(trans_id)
            except TerminalError as exc:
                if not exc.retryable:
                    raise
                failure = exc
            else:
                if on_update is not None:
                    on_update(last)
                if last.is_final:
                    return last
            polls += 1
            now = self._monotonic()
            if polls >= schedule.max_polls or now >= deadline:
                break
            yield Sleep(min(schedule.delay_s(polls, now - started), deadline - now))
        if last is None:
            if failure is None:
                raise TerminalError("wait() made no poll")
            raise failure
        return last

    # -- refunds, vouchers, identification -------------------------------------------------------

    def refund(
        self,
        trans_id: str,
        amount: int | None,
        pass_code: str | None,
        refund_key: str | None,
    ) -> Flow[Payment]:
        """CANCEL: refund ``amount`` (or all that remains), journaled under its refundKey."""
        _check_digits("transId", trans_id)
        if amount is not None:
            _check_amount(amount)
        code = pass_code or self.config.pass_code
        if code is None:
            raise ConfigurationError(
                "a refund needs the terminal's passCode: pass it, or configure pass_code"
            )
        _check_digits("passCode", code)
        key = refund_key or new_trans_key()
        _check_trans_key(key, "refundKey")
        body: dict[str, Any] = {"passCode": code, "refundKey": key}
        if amount is not None:
            body["amount"] = amount
        self.journal.record_refund_intent(
            refund_key=key, mid=self.config.mid, trans_id=trans_id, amount=amount
        )
        crash_point("after_intent")
        attempts = _Attempts()
        try:
            answer = yield from self._call(
                "POST",
                f"/v1/payments/{trans_id}/refunds",
                body=body,
                attempts=attempts,
                before_send=lambda: self.journal.mark_refund_sent(key),
            )
        except JournalError as exc:
            if not attempts.maybe_sent:
                raise
            raise OutcomeUnknown(
                f"the journal failed ({exc}) after a request for refund {key} may have reached "
                "the gateway; recover() will tell",
                refund_key=key,
                trans_id=trans_id,
            ) from exc
        except TerminalError as exc:
            self._settle_failure(
                exc, attempts, lambda *args: self.journal.mark_refund_unsent(key, *args)
            )
            raise OutcomeUnknown(
                f"the gateway's answer to refund {key} was lost ({exc}); recover() will tell",
                refund_key=key,
                trans_id=trans_id,
            ) from exc
        crash_point("after_send")
        try:
            payment = Payment.from_wire(answer.data, replayed=answer.replayed)
        except ProtocolError as exc:
            raise OutcomeUnknown(
                f"the answer to refund {key} could not be read ({exc})",
                refund_key=key,
                trans_id=trans_id,
            ) from exc
        self._remember(payment)
        return payment

    def voucher(self, trans_id: str, voucher_no: str) -> Flow[Payment]:
        """VOUCHERNO: attach the shop's slip number (a PUT: repeating it is harmless)."""
        _check_digits("transId", trans_id)
        if not isinstance(voucher_no, str) or not _VOUCHER.fullmatch(voucher_no):
            raise _invalid("voucherNo", "voucherNo must be 1 to 20 letters, digits or '-'")
        answer = yield from self._call(
            "PUT", f"/v1/payments/{trans_id}/voucher", body={"voucherNo": voucher_no}
        )
        payment = self._payment(answer)
        self._remember(payment)
        return payment

    def identify(self, code: str) -> Flow[Identification]:
        """IDENTIFY-SCANNED-QR-CODE: which wallet a scanned code belongs to."""
        if not isinstance(code, str) or not code.strip() or len(code) > MAX_CODE_LENGTH:
            raise _invalid("code", f"code must be 1 to {MAX_CODE_LENGTH} characters")
        answer = yield from self._call("POST", "/v1/identify", body={"code": code.strip()})
        return Identification.from_wire(answer.data)

    # -- recovery --------------------------------------------------------------------------------

    def recover(self, wait_s: float) -> Flow[RecoveryReport]:
        """Resolve every journal entry whose outcome this terminal never learned.

        Payments are asked for by STATUS (transKey) or PAYCHECK (transId); refunds by PAYCHECK
        of their payment. Nothing is ever sent again: a payment that never arrived is recorded
        as not charged, not retried behind the clerk's back.
        """
        self.recovered = True
        mid = self.config.mid
        payments: list[RecoveredPayment] = []
        for entry in reversed(self.journal.entries(unresolved=True, mid=mid, limit=1000)):
            payments.append((yield from self._recover_payment(entry)))
        refunds: list[RecoveredRefund] = []
        for refund in reversed(self.journal.refunds(unresolved=True, mid=mid, limit=1000)):
            refunds.append((yield from self._recover_refund(refund)))
        if wait_s > 0:
            deadline = self._monotonic() + wait_s
            for index, item in enumerate(payments):
                left = deadline - self._monotonic()
                if item.after != j.PENDING or item.trans_id is None or left <= 0:
                    continue
                try:
                    final = yield from self.wait(item.trans_id, left, None)
                except (AuthenticationError, PermissionDenied, ConfigurationError, JournalError):
                    raise
                except TerminalError:
                    continue  # stays as the first pass found it
                payments[index] = RecoveredPayment(
                    item.trans_key,
                    item.trans_id,
                    item.amount,
                    item.before,
                    final.status.value,
                    _describe(final),
                )
        return RecoveryReport(tuple(payments), tuple(refunds))

    def _recover_payment(self, entry: JournalEntry) -> Flow[RecoveredPayment]:
        def item(after: str, note: str, trans_id: str | None = entry.trans_id) -> RecoveredPayment:
            return RecoveredPayment(
                entry.trans_key, trans_id, entry.amount, entry.status, after, note
            )

        mark = _unsent_marker(self.journal.mark_unsent, self.journal.entry, entry.trans_key, entry)

        try:
            if entry.trans_id is not None:
                payment = yield from self.paycheck(entry.trans_id)
            else:
                payment = yield from self.status(entry.trans_key)
        except PaymentNotFound:
            after, note = self._not_found(entry.status, entry.sent_at, "payment", mark)
            return item(after, note)
        except (AuthenticationError, PermissionDenied, ConfigurationError, JournalError):
            raise  # every entry would fail the same way: the terminal must be fixed first
        except TerminalError as exc:
            if entry.status == j.INTENT:
                # An intent never marked "may be sent" never left: no need to ask anyone.
                held = mark(j.NOT_SENT)
                if held is None:
                    return item(j.NOT_SENT, "the request never left this terminal; not charged")
                return item(*self._changed_meanwhile("payment", held))
            return item(entry.status, f"could not ask the gateway ({exc}); run recover again")
        return item(payment.status.value, _describe(payment), payment.trans_id)

    def _recover_refund(self, entry: JournalRefund) -> Flow[RecoveredRefund]:
        def item(after: str, note: str, amount: int | None = entry.amount) -> RecoveredRefund:
            return RecoveredRefund(
                entry.refund_key, entry.trans_id, amount, entry.status, after, note
            )

        mark = _unsent_marker(
            self.journal.mark_refund_unsent, self.journal.refund, entry.refund_key, entry
        )

        try:
            payment = yield from self.paycheck(entry.trans_id)
        except PaymentNotFound:
            return item(*self._not_found(entry.status, entry.sent_at, "refund", mark))
        except (AuthenticationError, PermissionDenied, ConfigurationError, JournalError):
            raise
        except TerminalError as exc:
            if entry.status == j.INTENT:
                held = mark(j.NOT_SENT)
                if held is None:
                    return item(j.NOT_SENT, "the refund never left this terminal; nothing refunded")
                return item(*self._changed_meanwhile("refund", held))
            return item(entry.status, f"could not ask the gateway ({exc}); run recover again")
        refund = payment.refund_by_key(entry.refund_key)
        if refund is None:
            return item(*self._not_found(entry.status, entry.sent_at, "refund", mark))
        words = {
            RefundStatus.SUCCEEDED: "refunded",
            RefundStatus.FAILED: f"the wallet refused the refund ({refund.failure_reason})",
            RefundStatus.PENDING: "the wallet has not confirmed the refund yet",
        }[refund.status]
        return item(refund.status.value, words, refund.amount)

    @staticmethod
    def _changed_meanwhile(what: str, status: str) -> tuple[str, str]:
        """Another process changed the entry (sent it, say) while recovery asked about it."""
        return status, f"the {what} changed while recovery looked ({status}); run recover again"

    def _not_found(
        self,
        status: str,
        sent_at: datetime | None,
        what: str,
        mark: Callable[[str], str | None],
    ) -> tuple[str, str]:
        """The gateway does not have it: final only once it can no longer arrive.

        ``mark`` changes the entry only while it is as recovery read it (answers None), else
        answers the status another process wrote meanwhile (SENT, say), which is kept.
        """
        if status == j.INTENT:
            held = mark(j.NOT_SENT)
            if held is not None:
                return self._changed_meanwhile(what, held)
            return j.NOT_SENT, f"the {what} never left this terminal; nothing moved"
        grace = self.config.not_found_grace_s
        if status == j.SENT and j.sent_long_ago(sent_at, grace):
            held = mark(j.NOT_RECEIVED)
            if held is not None:
                return self._changed_meanwhile(what, held)
            return j.NOT_RECEIVED, f"the gateway never received the {what}; nothing moved"
        when = (sent_at or datetime.now(UTC)) + timedelta(seconds=grace)
        return status, (
            f"the gateway has no such {what} yet, but the request may still arrive; "
            f"run recover again after {when.astimezone().strftime('%H:%M:%S')}"
        )


def _describe(payment: Payment) -> str:
    """A payment's outcome in words a clerk can act on."""
    if payment.is_paid:
        refunded = f", {payment.refunded_amount} yen refunded" if payment.refunded_amount else ""
        return f"paid ({payment.status.value}{refunded})"
    if payment.is_unpaid:
        why = payment.failure_message or payment.failure_code or payment.status.value
        return f"not paid: {why}"
    if payment.pending_reason is PendingReason.WAITING_FOR_CUSTOMER:
        return "still waiting for the customer"
    return "the wallet has not answered yet; run recover again later"


class _Read(Protocol):
    """A journal entry (payment or refund) as recovery read it."""

    @property
    def status(self) -> str: ...

    @property
    def attempts(self) -> int: ...


def _unsent_marker(
    mark_unsent: Callable[..., bool],
    reread: Callable[[str], _Read | None],
    key: str,
    entry: _Read,
) -> Callable[[str], str | None]:
    """Recovery's ``mark``: resolve the entry ``key`` as never received, if still as read.

    The marker answers None when it changed the entry; otherwise the status another process
    wrote meanwhile (SENT, say), which is kept.
    """

    def mark(status: str) -> str | None:
        if mark_unsent(key, status, if_status=entry.status, if_attempts=entry.attempts):
            return None
        now = reread(key)
        return now.status if now is not None else entry.status

    return mark
