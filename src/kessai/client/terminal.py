"""``Terminal`` and ``AsyncTerminal``: one shop terminal's connection to a Kessai gateway.

Both run the same operations (``_core``); they differ only in how a request is sent and how a
pause is waited. Each takes an injected ``httpx`` client or transport, so tests and unusual
networks (proxies, custom TLS) need no monkeypatching.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import httpx

from kessai.client._core import Core, Flow, Renew, Send, Sleep
from kessai.client.config import TerminalConfig
from kessai.client.exceptions import TerminalError
from kessai.client.journal import Journal
from kessai.client.models import Identification, Payment, Session
from kessai.client.recovery import RecoveryReport

log = logging.getLogger("kessai.client")
T = TypeVar("T")


def _resolve_config(
    config: TerminalConfig | None,
    config_file: str | Path | None,
    overrides: dict[str, Any],
) -> TerminalConfig:
    if config is not None:
        return config.with_overrides(**overrides)
    return TerminalConfig.load(config_file, **overrides)


def _timeout(config: TerminalConfig) -> httpx.Timeout:
    return httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s)


class _Base:
    """What both terminals share: configuration, journal and the operations' state."""

    def __init__(
        self,
        config: TerminalConfig | None,
        *,
        base_url: str | None,
        mid: str | None,
        password: str | None,
        os: str | None,
        key: str | None,
        pass_code: str | None,
        journal_path: str | Path | None,
        config_file: str | Path | None,
        journal: Journal | None,
        recover_on_start: bool,
    ) -> None:
        overrides: dict[str, Any] = {
            "base_url": base_url,
            "mid": mid,
            "password": password,
            "os": os,
            "key": key,
            "pass_code": pass_code,
            "journal_path": Path(journal_path) if journal_path is not None else None,
        }
        self.config = _resolve_config(config, config_file, overrides)
        self._owns_journal = journal is None
        self.journal = journal if journal is not None else Journal(self.config.journal)
        self._core = Core(self.config, self.journal)
        # recover() runs before the first call when asked: a register that crashed learns the
        # outcome of what it left unfinished before it takes the next payment.
        self._core.recovered = not recover_on_start

    @property
    def logged_in(self) -> bool:
        """True when a session is kept (it may still have ended at the gateway)."""
        return self._core.token is not None


class Terminal(_Base):
    """A shop terminal (synchronous). Logs in lazily, journals every payment, retries safely.

    Settings come from ``config``, else from the arguments, ``KESSAI_TERMINAL_*`` variables and
    the config file (see ``TerminalConfig.load``)::

        with Terminal(base_url=..., mid=..., password=..., os=...) as terminal:
            payment = terminal.pay(1200, scanned_code)
            if not payment.is_final:
                payment = terminal.wait(payment.trans_id)
    """

    def __init__(
        self,
        config: TerminalConfig | None = None,
        *,
        base_url: str | None = None,
        mid: str | None = None,
        password: str | None = None,
        os: str | None = None,
        key: str | None = None,
        pass_code: str | None = None,
        journal_path: str | Path | None = None,
        config_file: str | Path | None = None,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        journal: Journal | None = None,
        recover_on_start: bool = True,
    ) -> None:
        super().__init__(
            config,
            base_url=base_url,
            mid=mid,
            password=password,
            os=os,
            key=key,
            pass_code=pass_code,
            journal_path=journal_path,
            config_file=config_file,
            journal=journal,
            recover_on_start=recover_on_start,
        )
        self._owns_client = client is None
        self._client = client or httpx.Client(transport=transport, timeout=_timeout(self.config))
        # Reentrant: a LOGIN driven under it never needs it again, but must not deadlock if so.
        self._login_lock = threading.RLock()

    # -- plumbing ----------------------------------------------------------------------------

    def _drive(self, flow: Flow[T]) -> T:
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    effect = flow.throw(error) if error is not None else flow.send(value)
                except StopIteration as stop:
                    return cast(T, stop.value)
                value, error = None, None
                if isinstance(effect, Send):
                    try:
                        value = self._client.request(
                            effect.method,
                            effect.url,
                            headers=dict(effect.headers),
                            json=effect.json,
                            params=dict(effect.params) if effect.params else None,
                        )
                    except (httpx.TransportError, httpx.DecodingError) as exc:
                        # A body that cannot be decoded is an answer lost on the way.
                        error = exc
                elif isinstance(effect, Sleep):
                    time.sleep(effect.seconds)
                elif isinstance(effect, Renew):
                    try:
                        # One LOGIN at a time: each would end the session the previous one opened.
                        with self._login_lock:
                            self._drive(self._core.renew(effect.stale))
                    except Exception as exc:  # thrown into the flow, which decides what it means
                        error = exc
        finally:
            flow.close()

    def _run(self, make: Callable[[], Flow[T]]) -> T:
        if self._core.token is None:
            # One LOGIN at a time: concurrent first calls would replace each other's session.
            with self._login_lock:
                self._drive(self._core.renew(None))
        if not self._core.recovered:
            try:
                self._drive(self._core.recover(0.0))
            except TerminalError as exc:
                log.warning("start-up recovery failed: %s", exc)
        return self._drive(make())

    # -- sessions ----------------------------------------------------------------------------

    def login(self) -> Session:
        """LOGIN now (normally the first call does it). Replaces this device's old session."""
        with self._login_lock:
            return self._drive(self._core.login())

    def logout(self) -> None:
        """LOGOUT: end the session. The next call logs in again."""
        with self._login_lock:
            self._drive(self._core.logout())

    # -- operations --------------------------------------------------------------------------

    def pay(
        self,
        amount: int,
        code: str,
        *,
        service_id: str | None = None,
        trans_key: str | None = None,
    ) -> Payment:
        """REQUEST: charge the code scanned from the customer's phone.

        The answer is the payment: COMPLETED (paid), FAILED (declined; ``failure_code`` says
        why), or PENDING — then ``wait()``. Raises ``OutcomeUnknown`` when the answer was lost:
        never take that as a decline. ``trans_key`` (generated when omitted) makes a repeat
        of the same payment safe.
        """
        return self._run(lambda: self._core.pay(amount, code, service_id, trans_key))

    def qr_code(
        self,
        amount: int,
        service_id: str,
        *,
        ttl_seconds: int | None = None,
        trans_key: str | None = None,
    ) -> Payment:
        """GET-QR-CODE: a PENDING payment with ``qr_data`` for the customer to scan."""
        return self._run(lambda: self._core.qr_code(amount, service_id, ttl_seconds, trans_key))

    def paycheck(self, trans_id: str) -> Payment:
        """PAYCHECK: the payment with this transId, fresh from the gateway."""
        return self._run(lambda: self._core.paycheck(trans_id))

    def status(self, trans_key: str) -> Payment:
        """STATUS: the payment with this transKey (when the transId never arrived)."""
        return self._run(lambda: self._core.status(trans_key))

    def wait(
        self,
        trans_id: str,
        timeout_s: float | None = None,
        *,
        on_update: Callable[[Payment], None] | None = None,
    ) -> Payment:
        """Poll PAYCHECK until the payment is final or ``timeout_s`` passed; answer the last.

        Polls on the configured ``PollSchedule`` (default: after 1 s, then every 2 s, every
        5 s after 30 s; 90 s in all). ``on_update`` sees every payment polled.
        """
        return self._run(lambda: self._core.wait(trans_id, timeout_s, on_update))

    def refund(
        self,
        trans_id: str,
        amount: int | None = None,
        *,
        pass_code: str | None = None,
        refund_key: str | None = None,
    ) -> Payment:
        """CANCEL: refund ``amount`` yen (all that remains when omitted) with the passCode.

        The refund is journaled under its ``refund_key`` (generated when omitted) before it is
        sent, and every retry sends the same key, so it never refunds twice.
        """
        return self._run(lambda: self._core.refund(trans_id, amount, pass_code, refund_key))

    def voucher(self, trans_id: str, voucher_no: str) -> Payment:
        """VOUCHERNO: attach the shop's slip number to a payment."""
        return self._run(lambda: self._core.voucher(trans_id, voucher_no))

    def identify(self, code: str) -> Identification:
        """IDENTIFY-SCANNED-QR-CODE: the wallet service of a scanned code."""
        return self._run(lambda: self._core.identify(code))

    def recover(self, *, wait_s: float = 0.0) -> RecoveryReport:
        """Resolve every journal entry whose outcome was never learned (after a crash).

        With ``wait_s``, payments still PENDING are polled for up to that long in all.
        """
        self._core.recovered = True
        return self._run(lambda: self._core.recover(wait_s))

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP client and the journal (when this terminal opened them)."""
        if self._owns_client:
            self._client.close()
        if self._owns_journal:
            self.journal.close()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncTerminal(_Base):
    """A shop terminal for asyncio programs; the same operations as ``Terminal``, awaited.

    Journal writes are local SQLite commits of a few milliseconds and run inline.
    """

    def __init__(
        self,
        config: TerminalConfig | None = None,
        *,
        base_url: str | None = None,
        mid: str | None = None,
        password: str | None = None,
        os: str | None = None,
        key: str | None = None,
        pass_code: str | None = None,
        journal_path: str | Path | None = None,
        config_file: str | Path | None = None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        journal: Journal | None = None,
        recover_on_start: bool = True,
    ) -> None:
        super().__init__(
            config,
            base_url=base_url,
            mid=mid,
            password=password,
            os=os,
            key=key,
            pass_code=pass_code,
            journal_path=journal_path,
            config_file=config_file,
            journal=journal,
            recover_on_start=recover_on_start,
        )
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            transport=transport, timeout=_timeout(self.config)
        )
        self._login_lock = asyncio.Lock()

    async def _drive(self, flow: Flow[T]) -> T:
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    effect = flow.throw(error) if error is not None else flow.send(value)
                except StopIteration as stop:
                    return cast(T, stop.value)
                value, error = None, None
                if isinstance(effect, Send):
                    try:
                        value = await self._client.request(
                            effect.method,
                            effect.url,
                            headers=dict(effect.headers),
                            json=effect.json,
                            params=dict(effect.params) if effect.params else None,
                        )
                    except (httpx.TransportError, httpx.DecodingError) as exc:
                        # A body that cannot be decoded is an answer lost on the way.
                        error = exc
                elif isinstance(effect, Sleep):
                    await asyncio.sleep(effect.seconds)
                elif isinstance(effect, Renew):
                    try:
                        async with self._login_lock:
                            await self._drive(self._core.renew(effect.stale))
                    except Exception as exc:  # thrown into the flow, which decides what it means
                        error = exc
        finally:
            flow.close()

    async def _run(self, make: Callable[[], Flow[T]]) -> T:
        if self._core.token is None:
            async with self._login_lock:
                await self._drive(self._core.renew(None))
        if not self._core.recovered:
            try:
                await self._drive(self._core.recover(0.0))
            except TerminalError as exc:
                log.warning("start-up recovery failed: %s", exc)
        return await self._drive(make())

    async def login(self) -> Session:
        """LOGIN now (normally the first call does it). Replaces this device's old session."""
        async with self._login_lock:
            return await self._drive(self._core.login())

    async def logout(self) -> None:
        """LOGOUT: end the session. The next call logs in again."""
        async with self._login_lock:
            await self._drive(self._core.logout())

    async def pay(
        self,
        amount: int,
        code: str,
        *,
        service_id: str | None = None,
        trans_key: str | None = None,
    ) -> Payment:
        """REQUEST: charge a customer's code (see ``Terminal.pay``)."""
        return await self._run(lambda: self._core.pay(amount, code, service_id, trans_key))

    async def qr_code(
        self,
        amount: int,
        service_id: str,
        *,
        ttl_seconds: int | None = None,
        trans_key: str | None = None,
    ) -> Payment:
        """GET-QR-CODE: a PENDING payment with ``qr_data`` for the customer to scan."""
        return await self._run(
            lambda: self._core.qr_code(amount, service_id, ttl_seconds, trans_key)
        )

    async def paycheck(self, trans_id: str) -> Payment:
        """PAYCHECK: the payment with this transId, fresh from the gateway."""
        return await self._run(lambda: self._core.paycheck(trans_id))

    async def status(self, trans_key: str) -> Payment:
        """STATUS: the payment with this transKey."""
        return await self._run(lambda: self._core.status(trans_key))

    async def wait(
        self,
        trans_id: str,
        timeout_s: float | None = None,
        *,
        on_update: Callable[[Payment], None] | None = None,
    ) -> Payment:
        """Poll PAYCHECK until the payment is final or ``timeout_s`` passed (see Terminal)."""
        return await self._run(lambda: self._core.wait(trans_id, timeout_s, on_update))

    async def refund(
        self,
        trans_id: str,
        amount: int | None = None,
        *,
        pass_code: str | None = None,
        refund_key: str | None = None,
    ) -> Payment:
        """CANCEL: refund ``amount`` yen, or all that remains (see ``Terminal.refund``)."""
        return await self._run(lambda: self._core.refund(trans_id, amount, pass_code, refund_key))

    async def voucher(self, trans_id: str, voucher_no: str) -> Payment:
        """VOUCHERNO: attach the shop's slip number to a payment."""
        return await self._run(lambda: self._core.voucher(trans_id, voucher_no))

    async def identify(self, code: str) -> Identification:
        """IDENTIFY-SCANNED-QR-CODE: the wallet service of a scanned code."""
        return await self._run(lambda: self._core.identify(code))

    async def recover(self, *, wait_s: float = 0.0) -> RecoveryReport:
        """Resolve every journal entry whose outcome was never learned (see Terminal)."""
        self._core.recovered = True
        return await self._run(lambda: self._core.recover(wait_s))

    async def aclose(self) -> None:
        """Close the HTTP client and the journal (when this terminal opened them)."""
        if self._owns_client:
            await self._client.aclose()
        if self._owns_journal:
            self.journal.close()

    async def __aenter__(self) -> AsyncTerminal:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
