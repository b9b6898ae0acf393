"""API fuzzing of the terminal API: schemathesis cases, sent to a running `kessai serve`.

The fuzzer reads the gateway's own ``/openapi.json`` and, for every operation in it, draws cases
with schemathesis in two modes: *positive* (every part valid by the description) and *negative*
(some part deliberately invalid). Each operation of the terminal API (under /v1) gets an equal
share of the budget; the others (health, metrics, provider notifications, sandbox) a quarter
share each. Random data alone would stop at the first door (an unknown session token, a transId
nobody issued), so each drawn case is tailored before it is sent: most carry a live session
token, many name payments that exist (of this merchant, and of another one), CANCEL mostly
carries the terminal's real passCode, REQUEST often pays with a real sandbox wallet code, LOGIN
often names a real terminal. Only the parts drawn valid are tailored; an invalid part is sent as
drawn. The remaining cases keep their random values, or carry a missing, malformed or ended
session token.

Every answer is checked:

- schemathesis' checks: no 5xx, a documented status code and content type, a body and headers
  that match the description, and invalid input refused with a 4xx;
- the error envelope of docs/errors.md on every error: exactly ``{"error": {code, message, field,
  retryable, requestId}}``, a code of ``ERROR_CODES`` with its own HTTP status, the requestId
  echoed in ``X-Request-Id``, ``Retry-After`` on 429;
- valid input is not refused as malformed: a case valid in every part is never answered
  MALFORMED_JSON, INVALID_FIELD, UNKNOWN_FIELD or UNSUPPORTED_MEDIA_TYPE (the description must say
  everything the gateway checks about a field's format);
- isolation: a payment of another merchant is never answered 2xx, and an answer about a payment
  is about the payment that was asked for;
- sessions: a request sent with a live session token is never answered SESSION_REQUIRED or
  SESSION_INVALID.

Failures are collected, not raised, so that one run reports every kind of defect it meets; the
caller asserts that there are none. ``FuzzReport`` counts the requests sent per operation.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from e2e.support import PRODUCT_BARCODE, CliBatch, Provisioner, Terminal, new_key
from kessai.domain.errors import ERROR_CODES

# Server settings for a fuzzing run. Lockouts are kept (the fuzzer meets them: wrong passwords and
# passCodes are among its inputs) but last seconds, not minutes, so that the operations behind
# them are reached again soon after.
FUZZ_SETTINGS: Final[Mapping[str, str]] = {
    "KESSAI_SANDBOX_REVEAL_AFTER_SECONDS": "1",
    "KESSAI_PROVIDER_RECHECK_INTERVAL_MS": "50",
    "KESSAI_LOGIN_LOCK_SECONDS": "2",
    "KESSAI_PASSCODE_LOCK_SECONDS": "2",
    "KESSAI_LOGIN_ADDRESS_WINDOW_SECONDS": "5",
}

# The guide's nine operations and the two image links of GET-QR-CODE: what must be fuzzed.
TERMINAL_OPERATIONS: Final = frozenset(
    {
        "LOGIN",
        "LOGOUT",
        "REQUEST",
        "PAYCHECK",
        "STATUS",
        "CANCEL",
        "VOUCHERNO",
        "GET-QR-CODE",
        "GET-QR-CODE-png",
        "GET-QR-CODE-svg",
        "IDENTIFY-SCANNED-QR-CODE",
    }
)
# Services whose sandbox wallets issue customer codes.
CODE_SERVICES: Final = ("01", "21", "20", "22", "05")
QR_SERVICES: Final = ("01", "02", "03", "04", "05", "07", "08", "20", "21", "22")
ERROR_KEYS: Final = frozenset({"code", "message", "field", "retryable", "requestId"})
# The codes that say "the request is malformed": a request valid by the description never gets
# one. Other 400s (SERVICE_MISMATCH, UNKNOWN_SERVICE) are about meaning, which no schema states.
FORMAT_CODES: Final = frozenset(
    {"MALFORMED_JSON", "INVALID_FIELD", "UNKNOWN_FIELD", "UNSUPPORTED_MEDIA_TYPE"}
)
# The share of each operation's cases drawn in positive mode (the rest are negative).
POSITIVE_SHARE: Final = 0.6
# The budget of an operation outside the terminal API (health, metrics, provider notifications,
# sandbox), relative to a terminal operation's.
OTHER_WEIGHT: Final = 0.25

BUILTIN_CHECKS: Final = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
)


# --- what the fuzzer knows of the gateway ---------------------------------------------------------


@dataclass
class Actor:
    """A terminal with a live session, that fuzzed requests are sent as."""

    name: str
    terminal: Terminal
    token: str


@dataclass
class KnownPayment:
    """A payment the gateway answered, and whose merchant it belongs to."""

    trans_id: str
    trans_key: str
    merchant_id: int
    kind: str
    status: str


@dataclass
class World:
    """Terminals, sessions, payments and sandbox codes for the fuzzer to use."""

    base_url: str
    own: Actor
    other: Actor  # a terminal of another merchant
    login_terminals: list[Terminal]
    logout_terminal: Terminal
    ended_tokens: list[str]
    payments: dict[str, KnownPayment] = field(default_factory=dict)
    codes: dict[str, list[str]] = field(default_factory=dict)  # unused, by service
    used_codes: list[str] = field(default_factory=list)
    refund_keys: list[str] = field(default_factory=list)

    def actors(self) -> tuple[Actor, Actor]:
        """The two terminals with sessions."""
        return self.own, self.other

    def remember(self, payment: Mapping[str, Any], merchant_id: int) -> None:
        """Keep a payment from an answer, so that later cases can name it."""
        trans_id = str(payment["transId"])
        self.payments[trans_id] = KnownPayment(
            trans_id,
            str(payment["transKey"]),
            merchant_id,
            str(payment["kind"]),
            str(payment["status"]),
        )
        for refund in payment.get("refunds") or []:
            key = str(refund.get("refundKey", ""))
            if key and key not in self.refund_keys:
                self.refund_keys.append(key)

    def payments_of(self, merchant_id: int, kind: str | None = None) -> list[KnownPayment]:
        """The known payments of a merchant (of one kind)."""
        return [
            p
            for p in self.payments.values()
            if p.merchant_id == merchant_id and (kind is None or p.kind == kind)
        ]

    def take_code(self, rng: random.Random) -> str | None:
        """A fresh one-time customer code of some service (None when all are spent)."""
        services = [s for s, codes in self.codes.items() if codes]
        if not services:
            return None
        code = self.codes[rng.choice(services)].pop()
        self.used_codes.append(code)
        return code


def login(http: httpx.Client, terminal: Terminal, key: str, attempts: int = 20) -> str:
    """LOGIN that must succeed (waiting out a lockout the fuzzer caused); answers the token."""
    body = {"mid": terminal.mid, "key": key, "password": terminal.password, "os": terminal.os}
    for _ in range(attempts):
        response = http.post("/v1/login", json=body)
        if response.status_code == 200:
            return str(response.json()["sessionToken"])
        if response.status_code != 429:
            break
        time.sleep(min(float(response.headers.get("retry-after", "1")), 5.0))
    raise AssertionError(f"LOGIN of {terminal.mid} failed: {response.status_code} {response.text}")


def prepare_world(base_url: str, database_url: str, *, payments: int = 8) -> World:
    """Provision two merchants and their terminals, log in, and make real payments.

    ``payments`` completed payments are made for each merchant (a third of them partly refunded),
    and QR payments, so that lookups, refunds and voucher numbers have something to find; sandbox
    codes of every outcome are issued for REQUEST cases to pay with.
    """
    batch = CliBatch(database_url)
    try:
        provisioner = Provisioner(batch, ahead=0)
        own_merchant = provisioner.merchant("fuzz shop")
        other_merchant = provisioner.merchant("fuzz other shop")
        own_terminal = provisioner.terminal_of(own_merchant)
        other_terminal = provisioner.terminal_of(other_merchant)
        logins = [provisioner.terminal_of(own_merchant) for _ in range(3)]
        logout_terminal = provisioner.terminal_of(own_merchant)
        provisioner.close()
    finally:
        batch.close()
    with httpx.Client(base_url=base_url, timeout=60.0) as http:
        ended = login(http, own_terminal, "ENDED")
        # A second LOGIN with the same key replaces the session: the first token has ended.
        own = Actor("own", own_terminal, login(http, own_terminal, "ENDED"))
        other = Actor("other", other_terminal, login(http, other_terminal, "OTHER"))
        world = World(base_url, own, other, logins, logout_terminal, [ended])
        # Each LOGIN terminal is in use by its own device from the start: LOGIN with that key
        # replaces the session, and with any other key is refused (TERMINAL_IN_USE), however
        # many times the fuzzer logs in.
        for index, terminal in enumerate(logins):
            login(http, terminal, f"FUZZ-{index}")
        for outcome in ("success", "password", "declined", "timeout-success", "error"):
            for service in CODE_SERVICES if outcome == "success" else ("01", "21"):
                count = 60 if outcome == "success" else 12
                answer = http.post(
                    "/sandbox/codes",
                    json={"serviceId": service, "outcome": outcome, "count": count},
                )
                assert answer.status_code == 200, answer.text
                world.codes.setdefault(service, []).extend(answer.json()["codes"])
        rng = random.Random(20261128)
        for actor in world.actors():
            headers = {"Authorization": f"Bearer {actor.token}"}
            for index in range(payments):
                code = world.codes["01"].pop(0)  # the first ones were issued as "success"
                world.used_codes.append(code)
                body = {"transKey": new_key("FZ"), "amount": 100_000, "code": code}
                answer = http.post("/v1/payments", json=body, headers=headers)
                assert answer.status_code == 200, answer.text
                payment = answer.json()
                world.remember(payment, actor.terminal.merchant_id)
                if index % 3 == 0:
                    refund = {
                        "passCode": actor.terminal.pass_code,
                        "amount": 1_000,
                        "refundKey": new_key("RK"),
                    }
                    answer = http.post(
                        f"/v1/payments/{payment['transId']}/refunds", json=refund, headers=headers
                    )
                    assert answer.status_code == 200, answer.text
                    world.remember(answer.json(), actor.terminal.merchant_id)
            for _ in range(max(2, payments // 3)):
                body = {
                    "transKey": new_key("FQ"),
                    "amount": 2_500,
                    "serviceId": rng.choice(QR_SERVICES),
                }
                answer = http.post("/v1/qr-codes", json=body, headers=headers)
                assert answer.status_code == 200, answer.text
                world.remember(answer.json(), actor.terminal.merchant_id)
        # The codes are shuffled so that a code's outcome is not known from its place.
        for codes in world.codes.values():
            rng.shuffle(codes)
    return world


# --- checks of our own ----------------------------------------------------------------------------


def header(headers: Mapping[str, Any], name: str) -> str | None:
    """One header of an answer, whatever the case of its name and the shape of its value."""
    for key, value in headers.items():
        if key.lower() == name.lower():
            if isinstance(value, list | tuple):
                return str(value[0]) if value else ""
            return str(value)
    return None


def envelope_problems(status: int, headers: Mapping[str, Any], content: bytes) -> list[str]:
    """What is wrong with an error answer, judged by docs/errors.md (empty when it is right)."""
    if status < 400:
        return []
    problems: list[str] = []
    content_type = header(headers, "content-type") or ""
    if not content_type.startswith("application/json"):
        problems.append(f"error answer {status} has content type {content_type!r}, not JSON")
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return [*problems, f"error answer {status} is not JSON: {content[:200]!r}"]
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return [*problems, f"error answer {status} is not {{'error': {{…}}}}: {body!r:.300}"]
    error = body["error"]
    if set(error) != ERROR_KEYS:
        problems.append(f"error keys {sorted(error)} are not {sorted(ERROR_KEYS)}")
    code = error.get("code")
    if code not in ERROR_CODES:
        problems.append(f"error code {code!r} is not in ERROR_CODES")
    elif ERROR_CODES[code][0] != status:
        problems.append(f"{code} is documented as {ERROR_CODES[code][0]}, answered {status}")
    message = error.get("message")
    if not isinstance(message, str) or not message.strip():
        problems.append(f"error message {message!r} is empty or not a string")
    if error.get("field") is not None and not isinstance(error.get("field"), str):
        problems.append(f"error field {error.get('field')!r} is neither a string nor null")
    if not isinstance(error.get("retryable"), bool):
        problems.append(f"retryable {error.get('retryable')!r} is not a boolean")
    request_id = error.get("requestId")
    if not isinstance(request_id, str) or not request_id:
        problems.append(f"requestId {request_id!r} is empty or not a string")
    elif header(headers, "x-request-id") != request_id:
        problems.append(
            f"requestId {request_id} differs from X-Request-Id {header(headers, 'x-request-id')}"
        )
    if status == 429 and not (header(headers, "retry-after") or "").isdigit():
        problems.append("429 answer without a Retry-After of whole seconds")
    return problems


def error_code(content: bytes) -> str | None:
    """The ``error.code`` of an answer, or None."""
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        return str(code) if code is not None else None
    return None


def acceptance_problem(all_valid: bool, status: int, content: bytes) -> str | None:
    """A request valid by the description that was refused as malformed, or None."""
    if not all_valid or status < 400:
        return None
    code = error_code(content)
    if code in FORMAT_CODES:
        return f"a request valid by the OpenAPI description was refused: {status} {code}"
    return None


def isolation_problem(
    asked_merchant: int | None,
    actor_merchant: int,
    status: int,
    content: bytes,
    trans_id: str | None,
    trans_key: str | None,
    known: Mapping[str, KnownPayment] | None = None,
) -> str | None:
    """A payment of another merchant shown, or an answer about another payment; or None.

    ``asked_merchant`` is the merchant of the payment a transId names. A transKey names a
    payment only within a merchant, so the payment answered for one is judged by its own
    transId among the ``known`` payments: another merchant's may share the key.
    """
    if not 200 <= status < 300:
        return None
    if asked_merchant is not None and asked_merchant != actor_merchant:
        return f"a payment of merchant {asked_merchant} was answered {status} to another merchant"
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None  # images
    if not isinstance(body, dict):
        return None
    owner = (known or {}).get(str(body.get("transId")))
    if owner is not None and owner.merchant_id != actor_merchant:
        return (
            f"payment {owner.trans_id} of merchant {owner.merchant_id} was answered {status} "
            "to another merchant"
        )
    if trans_id is not None and body.get("transId") != trans_id:
        return f"asked for payment {trans_id}, answered payment {body.get('transId')}"
    if trans_key is not None and body.get("transKey") != trans_key:
        return f"asked for transKey {trans_key}, answered transKey {body.get('transKey')}"
    return None


@dataclass(frozen=True)
class Asked:
    """Who a case is sent as (None: no live session) and which payment it names."""

    actor: Actor | None = None
    merchant_id: int | None = None  # the merchant of the named payment, when it is a known one
    trans_id: str | None = None
    trans_key: str | None = None
    known: Mapping[str, KnownPayment] | None = None  # the payments answered so far, by transId


def check_answer(
    report: FuzzReport, name: str, case: schemathesis.Case, response: Any, asked: Asked
) -> None:
    """Run every check on one answer and record what fails in ``report``.

    ``response`` is what ``case.call`` answered (or a ``requests.Response``).
    """
    status = int(response.status_code)
    content = bytes(response.content)
    found: list[tuple[str, str]] = []  # (check, what is wrong)
    try:
        case.validate_response(response, checks=list(BUILTIN_CHECKS))
    except BaseExceptionGroup as group:
        for failure in group.exceptions:
            title = str(getattr(failure, "title", type(failure).__name__))
            found.append((title, f"{title}: {getattr(failure, 'message', failure)}"))
    except AssertionError as failure:
        found.append(("schemathesis", str(failure)))
    found += [("error envelope", p) for p in envelope_problems(status, response.headers, content)]
    meta = case.meta
    all_valid = (
        meta is not None
        and all(not info.mode.is_negative for info in meta.components.values())
        and not _has_float(case.body)
    )
    problem = acceptance_problem(all_valid, status, content)
    if problem:
        found.append(("valid input accepted", problem))
    if asked.actor is not None:
        code = error_code(content)
        if code in ("SESSION_REQUIRED", "SESSION_INVALID"):
            found.append(("live session", f"sent with a live session, answered {code}"))
        problem = isolation_problem(
            asked.merchant_id,
            asked.actor.terminal.merchant_id,
            status,
            content,
            asked.trans_id,
            asked.trans_key,
            asked.known,
        )
        if problem:
            found.append(("isolation", problem))
    if found:
        example = _example(case, status, content)
        for check, summary in found:
            report.add_failure(name, check, summary, example)


def _example(case: schemathesis.Case, status: int, content: bytes) -> str:
    try:
        request = case.as_curl_command()
    except Exception:  # the example is only for the report: never let it hide the answer
        request = repr(case)
    return f"{request}\n→ {status} {content[:300].decode('utf-8', 'replace')}"


# --- the report -----------------------------------------------------------------------------------


@dataclass
class Found:
    """One kind of defect, with the first request that showed it."""

    operation: str
    check: str
    summary: str
    example: str
    count: int = 1


@dataclass
class OperationStats:
    """What one operation was sent and answered."""

    positive: int = 0
    negative: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)

    @property
    def sent(self) -> int:
        """Requests sent for the operation's cases."""
        return self.positive + self.negative

    @property
    def reached(self) -> int:
        """Answers other than 401: past the session check (for LOGIN, past the credentials)."""
        return self.sent - self.statuses[401]


@dataclass
class FuzzReport:
    """Requests per operation, what they were answered, and the defects found."""

    seed: int
    operations: dict[str, OperationStats] = field(default_factory=dict)
    found: dict[tuple[str, str, str], Found] = field(default_factory=dict)
    helper_requests: int = 0
    elapsed: float = 0.0
    waiting: float = 0.0  # of ``elapsed``, the time spent waiting for answers

    @property
    def total(self) -> int:
        """Requests sent for generated cases, all operations together."""
        return sum(stats.sent for stats in self.operations.values())

    @property
    def failures(self) -> list[Found]:
        """The defects found, one per kind."""
        return list(self.found.values())

    def add_failure(self, operation: str, check: str, summary: str, example: str) -> None:
        """Record a defect (counting repeats of the same kind)."""
        first_line = summary.strip().splitlines()[0] if summary.strip() else check
        key = (operation, check, first_line[:160])
        if key in self.found:
            self.found[key].count += 1
        else:
            self.found[key] = Found(operation, check, summary.strip(), example)

    def table(self) -> str:
        """A plain-text table: per operation, requests, positive/negative, and answers."""
        lines = [
            f"{'operation':<26}{'requests':>9}{'positive':>9}{'negative':>9}{'2xx':>6}"
            f"{'past-auth':>10}  answers"
        ]
        for name in sorted(self.operations):
            s = self.operations[name]
            ok = sum(n for status, n in s.statuses.items() if 200 <= status < 300)
            answers = ", ".join(f"{code}×{n}" for code, n in s.codes.most_common(6))
            lines.append(
                f"{name:<26}{s.sent:>9}{s.positive:>9}{s.negative:>9}{ok:>6}"
                f"{s.reached:>10}  {answers}"
            )
        lines.append(f"{'total':<26}{self.total:>9}")
        return "\n".join(lines)

    def describe_failures(self) -> str:
        """Every defect found, with an example request."""
        if not self.found:
            return "no failures"
        parts = []
        for f in self.found.values():
            parts.append(f"[{f.operation}] {f.check} (×{f.count})\n{f.summary}\n{f.example}")
        return "\n\n".join(parts)


# --- the fuzzer -----------------------------------------------------------------------------------


def load_schema(base_url: str) -> OpenApiSchema:
    """The gateway's OpenAPI description, as schemathesis reads it."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=30)
    assert isinstance(schema, OpenApiSchema)
    return schema


class Fuzzer:
    """Draws, tailors, sends and checks cases for every operation of the terminal API."""

    def __init__(self, world: World, schema: OpenApiSchema, report: FuzzReport) -> None:
        self.world = world
        self.schema = schema
        self.report = report
        self.session = requests.Session()
        self.helper = httpx.Client(base_url=world.base_url, timeout=60.0)
        self.operations = {
            str(schema.get_operation_id(op)): op
            for op in (result.ok() for result in schema.get_all_operations())
        }

    def close(self) -> None:
        """Close the HTTP clients."""
        self.session.close()
        self.helper.close()

    # -- running
    def run(self, budget: int, rounds: int = 3) -> None:
        """Send about ``budget`` generated requests, spread over every operation and both modes.

        The budget is spent in ``rounds`` so that what one operation made (payments, refunds,
        ended sessions) is there for the others in the next round.
        """
        names = sorted(self.operations)
        weights = {name: 1.0 if name in TERMINAL_OPERATIONS else OTHER_WEIGHT for name in names}
        unit = budget / sum(weights.values())
        # Rounded up, so that the operations together get at least the budget.
        budgets = {name: max(2, math.ceil(unit * weight)) for name, weight in weights.items()}
        started = time.monotonic()
        for round_number in range(rounds):
            for index, name in enumerate(names):
                extra = 1 if round_number < budgets[name] % rounds else 0
                share = budgets[name] // rounds + extra
                positive = round(share * POSITIVE_SHARE)
                case_seed = self.report.seed + 1_000 * round_number + index
                self._run_mode(name, GenerationMode.POSITIVE, positive, case_seed)
                unsent = self._run_mode(
                    name, GenerationMode.NEGATIVE, share - positive, case_seed + 500
                )
                if unsent:
                    self._run_mode(name, GenerationMode.POSITIVE, unsent, case_seed + 250)
        self.report.elapsed += time.monotonic() - started

    def _run_mode(self, name: str, mode: GenerationMode, count: int, base_seed: int) -> int:
        """Send ``count`` cases of one operation in one mode (drawing again if Hypothesis stops).

        Answers how many could not be drawn: an operation that takes nothing (GET /healthz)
        has no invalid cases.
        """
        stats = self.report.operations.setdefault(name, OperationStats())
        target = self._sent(stats, mode) + count
        for attempt in range(5):
            left = target - self._sent(stats, mode)
            if left <= 0:
                break
            try:
                self._batch(name, mode, left, base_seed + 7 * attempt)
            except Unsatisfiable:
                break
        return max(0, target - self._sent(stats, mode))

    @staticmethod
    def _sent(stats: OperationStats, mode: GenerationMode) -> int:
        return stats.positive if mode.is_positive else stats.negative

    def _batch(self, name: str, mode: GenerationMode, count: int, batch_seed: int) -> None:
        """One Hypothesis run of at most ``count`` cases."""
        stats = self.report.operations[name]
        target = self._sent(stats, mode) + count
        strategy = self.operations[name].as_strategy(generation_mode=mode)

        @seed(batch_seed)
        @settings(
            max_examples=count,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy, data=st.data())
        def send(case: schemathesis.Case, data: st.DataObject) -> None:
            if self._sent(stats, mode) >= target:
                return
            # The tailoring's choices are drawn through Hypothesis, so that a seed replays them,
            # and salted per batch, as every batch starts from Hypothesis' simplest draw.
            salt = data.draw(st.integers(min_value=0, max_value=2**32 - 1))
            self.send(name, case, random.Random(salt * 1_000_003 + batch_seed), mode)

        send()

    # -- one case
    def send(
        self, name: str, case: schemathesis.Case, rng: random.Random, mode: GenerationMode
    ) -> None:
        """Tailor one case, send it, check the answer, and learn from it."""
        asked = self.tailor(name, case, rng)
        stats = self.report.operations[name]
        sent_at = time.monotonic()
        try:
            response = case.call(base_url=self.world.base_url, session=self.session, timeout=60)
        except (requests.RequestException, OSError) as exc:
            self.report.add_failure(name, "transport", f"no answer: {exc!r}", repr(case))
            return
        finally:
            self.report.waiting += time.monotonic() - sent_at
            if mode.is_positive:
                stats.positive += 1
            else:
                stats.negative += 1
        stats.statuses[response.status_code] += 1
        stats.codes[error_code(response.content) or str(response.status_code)] += 1
        check_answer(self.report, name, case, response, asked)
        if asked.actor is not None:
            self.learn(name, asked.actor, response.status_code, response.content)

    def learn(self, name: str, actor: Actor, status: int, content: bytes) -> None:
        """Remember payments the gateway answered, for later cases to name."""
        if status != 200 or name in ("LOGIN", "LOGOUT", "IDENTIFY-SCANNED-QR-CODE"):
            return
        try:
            body = json.loads(content)
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(body, dict) and "transId" in body:
            self.world.remember(body, actor.terminal.merchant_id)

    # -- tailoring
    def tailor(self, name: str, case: schemathesis.Case, rng: random.Random) -> Asked:
        """Put real sessions, payments, codes and passCodes into the valid parts of ``case``.

        Answers who the case is sent as and which payment it names.
        """
        world = self.world
        meta = case.meta
        negative = {
            location.name
            for location, info in (meta.components.items() if meta is not None else ())
            if info.mode.is_negative
        }
        body_valid = "BODY" not in negative and isinstance(case.body, dict)
        if body_valid:
            _integral_floats_to_ints(case, rng)
        if name == "LOGIN":
            if body_valid:
                self._tailor_login(case, rng)
            return Asked()
        if name not in TERMINAL_OPERATIONS:
            self._tailor_other(name, case, rng, negative, body_valid)
            return Asked()
        actor: Actor | None = None
        if "HEADER" not in negative:
            actor = self._authorize(name, case, rng)
        acting = actor or world.own
        asked_merchant: int | None = None
        asked_id: str | None = None
        asked_key: str | None = None
        if "transId" in (case.path_parameters or {}) and "PATH" not in negative:
            kind = "MERCHANT_QR" if name.startswith("GET-QR-CODE-") else None
            chosen = self._pick_payment(rng, acting, kind, refundable=name == "CANCEL")
            if chosen is not None:
                case.path_parameters = {**(case.path_parameters or {}), "transId": chosen.trans_id}
                asked_merchant = chosen.merchant_id
            asked_id = str(case.path_parameters["transId"])
        if name == "STATUS" and "QUERY" not in negative:
            chosen = self._pick_payment(rng, acting, None)
            if chosen is not None:
                # Judged by the payment answered (``known``): the actor's merchant may have a
                # payment of its own under another merchant's transKey, and is answered that.
                case.query = {**(case.query or {}), "transKey": chosen.trans_key}
            if isinstance(case.query, dict) and "transKey" in case.query:
                asked_key = str(case.query["transKey"])
        if body_valid:
            body: dict[str, Any] = dict(case.body)
            if name == "CANCEL":
                self._tailor_refund(body, rng, acting)
            elif name == "REQUEST":
                self._tailor_request(body, rng, acting)
            elif name == "GET-QR-CODE":
                self._tailor_qr(body, rng, acting)
            elif name == "IDENTIFY-SCANNED-QR-CODE" and rng.random() < 0.5:
                body["code"] = rng.choice([*world.used_codes[-50:], PRODUCT_BARCODE])
            case.body = body
        if actor is None:
            return Asked()
        return Asked(actor, asked_merchant, asked_id, asked_key, world.payments)

    def _tailor_other(
        self,
        name: str,
        case: schemathesis.Case,
        rng: random.Random,
        negative: set[str],
        body_valid: bool,
    ) -> None:
        """Operations outside the terminal API: no session; real payments for the sandbox."""
        if "transId" in (case.path_parameters or {}) and "PATH" not in negative:
            known = list(self.world.payments.values())
            if known and rng.random() < 0.8:
                chosen = rng.choice(known)
                case.path_parameters = {**(case.path_parameters or {}), "transId": chosen.trans_id}
        if name == "providerNotification" and "PATH" not in negative and rng.random() < 0.7:
            case.path_parameters = {"provider": rng.choice(["paypay", "alipayplus"])}
        if name == "sandboxIssueCodes" and body_valid:
            body = dict(case.body)
            if rng.random() < 0.7:
                body["serviceId"] = rng.choice(CODE_SERVICES)
            if isinstance(body.get("count"), int) and rng.random() < 0.95:
                # Up to 10,000 codes a call are allowed; the fuzzer has no use for so many.
                body["count"] = 1 + body["count"] % 20
            case.body = body

    def _authorize(self, name: str, case: schemathesis.Case, rng: random.Random) -> Actor | None:
        """Mostly a live session; sometimes none, a malformed one, or one that has ended."""
        world = self.world
        headers = dict(case.headers or {})
        roll = rng.random()
        actor: Actor | None = None
        if name == "LOGOUT":
            if roll < 0.6:
                # LOGOUT ends the session it names: open a fresh one for it.
                token = login(self.helper, world.logout_terminal, "LOGOUT")
                self.report.helper_requests += 1
                headers["Authorization"] = f"Bearer {token}"
                world.ended_tokens.append(token)
                actor = Actor("logout", world.logout_terminal, token)
                case.headers = headers
                return actor
            roll = 0.82 + rng.random() * 0.18  # one of the bad sessions below
        if roll < 0.72:
            actor = world.own
        elif roll < 0.82:
            actor = world.other
        elif roll < 0.86:
            headers.pop("Authorization", None)
            headers.pop("authorization", None)
        elif roll < 0.91:
            headers["Authorization"] = f"Bearer {rng.choice(world.ended_tokens)}"
        elif roll < 0.95:
            headers["Authorization"] = f"Basic {new_key('X')}"
        # else: the random token schemathesis drew
        if actor is not None:
            headers["Authorization"] = f"Bearer {actor.token}"
        case.headers = headers
        return actor

    def _pick_payment(
        self, rng: random.Random, actor: Actor, kind: str | None, *, refundable: bool = False
    ) -> KnownPayment | None:
        """A known payment: mostly the actor's merchant's, sometimes another's, or none.

        ``refundable`` prefers the merchant's payments that can still be refunded.
        """
        roll = rng.random()
        world = self.world
        if roll < 0.7:
            merchant = actor.terminal.merchant_id
            paid = [
                p
                for p in world.payments_of(merchant)
                if p.status in ("COMPLETED", "PARTIALLY_REFUNDED")
            ]
            if refundable and paid and rng.random() < 0.8:
                return rng.choice(paid)
        elif roll < 0.82:
            others = {p.merchant_id for p in world.payments.values()} - {actor.terminal.merchant_id}
            if not others:
                return None
            merchant = rng.choice(sorted(others))
        else:
            return None  # keep the drawn value
        candidates = world.payments_of(merchant, kind) or world.payments_of(merchant)
        return rng.choice(candidates) if candidates else None

    def _tailor_login(self, case: schemathesis.Case, rng: random.Random) -> None:
        world = self.world
        body = dict(case.body)
        index = rng.randrange(len(world.login_terminals))
        terminal = world.login_terminals[index]
        if rng.random() < 0.8:
            body["mid"] = terminal.mid
        if rng.random() < 0.8:
            body["os"] = terminal.os
        if body.get("mid") == terminal.mid and rng.random() < 0.75:
            body["password"] = terminal.password
        roll = rng.random()
        if roll < 0.8:
            body["key"] = f"FUZZ-{index}"  # the device's own key: its session is replaced
        elif roll < 0.9:
            body["key"] = "00:1A:2B:3C:4D:5E"  # another device: TERMINAL_IN_USE
        case.body = body

    def _tailor_refund(self, body: dict[str, Any], rng: random.Random, actor: Actor) -> None:
        if rng.random() < 0.85:
            body["passCode"] = actor.terminal.pass_code
        roll = rng.random()
        if roll < 0.5:
            body["amount"] = rng.randint(1, 500)
        elif roll < 0.55:
            body.pop("amount", None)  # all that remains
        roll = rng.random()
        if roll < 0.15 and self.world.refund_keys:
            body["refundKey"] = rng.choice(self.world.refund_keys)  # a replay, or a conflict
        elif roll < 0.65:
            body["refundKey"] = new_key("RF")

    def _tailor_request(self, body: dict[str, Any], rng: random.Random, actor: Actor) -> None:
        world = self.world
        roll = rng.random()
        if roll < 0.7:
            code = world.take_code(rng)
            if code is not None:
                body["code"] = code
                if "serviceId" in body and rng.random() < 0.7:
                    body.pop("serviceId")
        elif roll < 0.8 and world.used_codes:
            body["code"] = rng.choice(world.used_codes)  # spent, or never issued to us
        self._trans_key(body, rng, actor, "CUSTOMER_CODE")

    def _tailor_qr(self, body: dict[str, Any], rng: random.Random, actor: Actor) -> None:
        if rng.random() < 0.85:
            body["serviceId"] = rng.choice(QR_SERVICES)
        self._trans_key(body, rng, actor, "MERCHANT_QR")

    def _trans_key(self, body: dict[str, Any], rng: random.Random, actor: Actor, kind: str) -> None:
        """A transKey: one used before (a replay, or a conflict), a new one, or the drawn one.

        The generator draws short keys again and again ("0", "A"), which would make most
        requests conflicts with the first one; a transKey is new for every real sale.
        """
        roll = rng.random()
        mine = self.world.payments_of(actor.terminal.merchant_id, kind)
        if roll < 0.1 and mine:
            body["transKey"] = rng.choice(mine).trans_key
        elif roll < 0.8:
            body["transKey"] = new_key("FK")

    # -- sweeps the generator does not make
    def sweep_methods(self) -> int:
        """Every undeclared method on every path: 405 METHOD_NOT_ALLOWED, an envelope, Allow.

        Answers the number of requests sent.
        """
        sent = 0
        headers = {"Authorization": f"Bearer {self.world.own.token}"}
        paths: dict[str, set[str]] = {}
        for op in self.operations.values():
            paths.setdefault(op.path, set()).add(op.method.upper())
        any_payment = next(iter(self.world.payments))
        for path, declared in sorted(paths.items()):
            url = _fill(path, any_payment)
            for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - declared):
                response = self.helper.request(method, url, headers=headers, json={})
                sent += 1
                label = f"{method} {path}"
                example = f"{method} {url} → {response.status_code} {response.text[:200]}"
                if response.status_code != 405 or error_code(response.content) != (
                    "METHOD_NOT_ALLOWED"
                ):
                    self.report.add_failure(
                        label, "undeclared method", "not answered 405 METHOD_NOT_ALLOWED", example
                    )
                for problem in envelope_problems(
                    response.status_code, dict(response.headers), response.content
                ):
                    self.report.add_failure(label, "error envelope", problem, example)
                allow = {m.strip().upper() for m in response.headers.get("allow", "").split(",")}
                if not declared <= allow:
                    self.report.add_failure(
                        label,
                        "undeclared method",
                        f"405 without an Allow header naming {sorted(declared)}",
                        example,
                    )
        return sent

    def sweep_media_types(self) -> int:
        """A valid body sent as text/plain to every operation with a body: a documented 415.

        Answers the number of requests sent.
        """
        sent = 0
        world = self.world
        valid_bodies: dict[str, dict[str, Any]] = {
            "LOGIN": {
                "mid": world.own.terminal.mid,
                "key": "MEDIA",
                "password": "x" * 12,
                "os": world.own.terminal.os,
            },
            "REQUEST": {"transKey": new_key("MT"), "amount": 100, "code": PRODUCT_BARCODE},
            "CANCEL": {"passCode": world.own.terminal.pass_code, "amount": 1},
            "VOUCHERNO": {"voucherNo": "SLIP-1"},
            "GET-QR-CODE": {"transKey": new_key("MT"), "amount": 100, "serviceId": "01"},
            "IDENTIFY-SCANNED-QR-CODE": {"code": PRODUCT_BARCODE},
            "sandboxIssueCodes": {"serviceId": "01"},
        }
        for name, op in sorted(self.operations.items()):
            if op.body is None or not len(op.body):
                continue
            assert name in valid_bodies, f"{name} takes a body: give the sweep a valid one"
            mine = world.payments_of(world.own.terminal.merchant_id)
            url = _fill(op.path, mine[0].trans_id)
            headers = {
                "Authorization": f"Bearer {world.own.token}",
                "Content-Type": "text/plain",
            }
            response = self.helper.request(
                op.method.upper(),
                url,
                headers=headers,
                content=json.dumps(valid_bodies[name]).encode(),
            )
            sent += 1
            example = (
                f"{op.method.upper()} {url} (text/plain) → {response.status_code} "
                f"{response.text[:200]}"
            )
            documented = set(op.definition.raw.get("responses", {}))
            if response.status_code != 415 or error_code(response.content) != (
                "UNSUPPORTED_MEDIA_TYPE"
            ):
                self.report.add_failure(
                    name,
                    "media type",
                    "a text/plain body was not answered 415 UNSUPPORTED_MEDIA_TYPE",
                    example,
                )
            elif "415" not in documented:
                self.report.add_failure(
                    name, "media type", "415 is answered but not documented", example
                )
            for problem in envelope_problems(
                response.status_code, dict(response.headers), response.content
            ):
                self.report.add_failure(name, "error envelope", problem, example)
        return sent


def _fill(path: str, trans_id: str) -> str:
    """A path template with real values in its parameters."""
    return (
        path.replace("{transId}", trans_id)
        .replace("{provider}", "paypay")
        .replace("{decision}", "approve")
    )


def _has_float(value: Any) -> bool:
    """Whether a body holds a float anywhere (JSON Schema's "integer" admits 5.0; we do not)."""
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return False


def _integral_floats_to_ints(case: schemathesis.Case, rng: random.Random) -> None:
    """Mostly send 5 for 5.0: the API refuses integers written with a fraction (docs/api.md).

    JSON Schema cannot say so (to it, 5.0 is an integer), so the generator draws them among valid
    values; most are sent as integers to reach the operation, the rest check the refusal.
    """
    if not isinstance(case.body, dict) or rng.random() < 0.1:
        return
    body = {
        key: int(value) if isinstance(value, float) and value.is_integer() else value
        for key, value in case.body.items()
    }
    case.body = body


def run_fuzz(
    world: World,
    budget: int,
    seed_value: int,
    *,
    rounds: int = 3,
    sweeps: bool = True,
) -> FuzzReport:
    """Fuzz every operation of the terminal API with about ``budget`` generated requests."""
    report = FuzzReport(seed=seed_value)
    fuzzer = Fuzzer(world, load_schema(world.base_url), report)
    try:
        missing = TERMINAL_OPERATIONS - set(fuzzer.operations)
        assert not missing, f"operations missing from /openapi.json: {sorted(missing)}"
        if sweeps:
            report.helper_requests += fuzzer.sweep_methods()
            report.helper_requests += fuzzer.sweep_media_types()
        fuzzer.run(budget, rounds=rounds)
    finally:
        fuzzer.close()
    return report
