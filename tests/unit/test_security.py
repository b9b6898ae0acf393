"""Secrets: masking of customer codes, session tokens, argon2 hashes and issued credentials."""

from __future__ import annotations

import base64
import collections
import hmac
import os
import re
import string
from collections.abc import Callable

import pytest
from argon2.exceptions import VerifyMismatchError
from hypothesis import given, settings
from hypothesis import strategies as st

from kessai import security
from kessai.domain import fields
from kessai.security import (
    SESSION_TOKEN_BYTES,
    constant_time_equal,
    hash_secret,
    keyed_hash,
    mask_code,
    new_mid,
    new_os,
    new_passcode,
    new_password,
    new_refund_id,
    new_request_id,
    new_session_token,
    new_trans_id,
    random_below,
    random_digits,
    token_hash,
    verify_secret,
)
from kessai.service.gateway import _DUMMY_HASH

SAMPLES = 300
MAX_REVEALED = 6
# The masked form is stored in payments.code_masked, a String(40).
CODE_MASKED_COLUMN_LENGTH = 40

code_alphabet = st.characters(exclude_characters="*", exclude_categories=["Cs"])


# --- Masking customer codes ---------------------------------------------------------------------


def revealed(code: str, masked: str) -> int:
    return sum(1 for c in masked if c != "*")


@settings(max_examples=500)
@given(code=st.text(alphabet=code_alphabet, max_size=600))
def test_masking_never_reveals_more_than_six_characters(code: str) -> None:
    masked = mask_code(code)
    assert revealed(code, masked) <= MAX_REVEALED
    assert len(masked) <= CODE_MASKED_COLUMN_LENGTH
    if len(code) >= 7:
        # No seven consecutive characters of the code survive.
        windows = {code[i : i + 7] for i in range(len(code) - 6)}
        assert not any(w in masked for w in windows)


@settings(max_examples=300)
@given(code=st.text(alphabet="0123456789", min_size=9, max_size=400))
def test_long_codes_keep_four_leading_and_two_trailing_characters(code: str) -> None:
    masked = mask_code(code)
    assert masked.startswith(code[:4])
    assert masked.endswith(code[-2:])
    assert set(masked[4:-2]) == {"*"}
    assert mask_code(code) == masked  # deterministic: two masks of one code compare equal


@given(code=st.text(alphabet=code_alphabet, max_size=8))
def test_short_codes_are_hidden_entirely(code: str) -> None:
    assert mask_code(code) == "*" * len(code)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("", ""),
        ("12345678", "********"),
        ("123456789", "1234***89"),
        ("900081818811241768175934", "9000******************34"),
    ],
)
def test_mask_examples(code: str, expected: str) -> None:
    assert mask_code(code) == expected


# --- Session tokens ---------------------------------------------------------------------------


def test_tokens_carry_at_least_128_random_bits() -> None:
    assert SESSION_TOKEN_BYTES * 8 >= 128
    token = new_session_token()
    assert re.fullmatch(r"[A-Za-z0-9_\-]+", token), "URL-safe, fits a Bearer header"
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert len(raw) * 8 >= 128
    assert len(raw) == SESSION_TOKEN_BYTES


def test_tokens_are_unique() -> None:
    tokens = [new_session_token() for _ in range(2000)]
    assert len(set(tokens)) == len(tokens)
    # Not even a shared prefix longer than chance would give.
    assert len({t[:8] for t in tokens}) == len(tokens)


def test_request_ids_are_twenty_hex_digits_and_unique() -> None:
    ids = [new_request_id() for _ in range(50_000)]
    assert all(re.fullmatch(r"[0-9a-f]{20}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    # Random, not counted: consecutive ids share no long prefix.
    assert len({i[:8] for i in ids[:1000]}) == 1000


def _drawn_here_and_in_a_fork(draw: Callable[[], str], count: int) -> tuple[list[str], list[str]]:
    """``count`` draws in this process and ``count`` in a child forked just before them."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its draws and leave at once
        os.write(write, " ".join(draw() for _ in range(count)).encode())
        os._exit(0)
    os.close(write)
    ours = [draw() for _ in range(count)]
    with os.fdopen(read, "rb") as pipe:
        theirs = pipe.read().decode().split()
    os.waitpid(pid, 0)
    return ours, theirs


def test_a_forked_process_gets_request_ids_of_its_own() -> None:
    # Should the generator not reseed in a forked child, parent and child would draw the very
    # same next ids.
    [ours], [theirs] = _drawn_here_and_in_a_fork(new_request_id, 1)
    assert re.fullmatch(r"[0-9a-f]{20}", theirs)
    assert theirs != ours


def test_token_hash_is_sha256_hex_and_never_the_token() -> None:
    token = new_session_token()
    digest = token_hash(token)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == token_hash(token)
    assert digest != token_hash(new_session_token())
    assert token not in digest


# --- argon2 -----------------------------------------------------------------------------------


def test_hash_and_verify() -> None:
    stored = hash_secret("Abcdef123456")
    assert stored.startswith("$argon2id$")
    assert "m=19456,t=2,p=1" in stored
    assert "Abcdef123456" not in stored
    assert verify_secret(stored, "Abcdef123456")
    assert not verify_secret(stored, "Abcdef123457")
    assert not verify_secret(stored, "")


def test_hashes_are_salted() -> None:
    first, second = hash_secret("1234"), hash_secret("1234")
    assert first != second
    assert verify_secret(first, "1234")
    assert verify_secret(second, "1234")
    assert not verify_secret(first, "1235")


@pytest.mark.parametrize("bad", ["", "not-a-hash", "$argon2id$v=19$garbage", "$2b$12$abcdef"])
def test_verify_does_not_raise_on_a_malformed_hash(bad: str) -> None:
    assert verify_secret(bad, "1234") is False


def test_dummy_hash_for_unknown_mids_costs_as_much_as_a_real_one() -> None:
    """LOGIN compares against this hash for unknown mids so that timing tells nothing.

    It must be a well-formed argon2id hash with the same cost as real ones: a malformed one
    would be rejected at once, and an unknown mid would answer faster than a known one.
    """
    real = hash_secret("Abcdef123456")
    assert _DUMMY_HASH.split("$")[1:4] == real.split("$")[1:4]
    with pytest.raises(VerifyMismatchError):
        security._hasher.verify(_DUMMY_HASH, "Abcdef123456")


# --- Issued credentials and identifiers -------------------------------------------------------


def test_mid_format() -> None:
    for _ in range(SAMPLES):
        mid = new_mid()
        assert re.fullmatch(r"[1-9][0-9]{15}", mid, flags=re.ASCII)
        fields.check("mid", mid)


def test_password_format() -> None:
    for _ in range(SAMPLES):
        password = new_password()
        assert re.fullmatch(r"[A-Za-z0-9]{12}", password, flags=re.ASCII)
        assert any(c in string.ascii_letters for c in password)
        assert any(c in string.digits for c in password)
        fields.check("password", password)
    assert len({new_password() for _ in range(SAMPLES)}) == SAMPLES


def test_passcode_format() -> None:
    seen = set()
    for _ in range(SAMPLES):
        passcode = new_passcode()
        assert re.fullmatch(r"[0-9]{4}", passcode, flags=re.ASCII)
        fields.check("passCode", passcode)
        seen.add(passcode)
    assert len(seen) > SAMPLES // 2  # drawn from 10,000 values, not a constant


def test_os_format() -> None:
    for _ in range(SAMPLES):
        os_value = new_os()
        assert re.fullmatch(r"[1-9][0-9]{5}", os_value, flags=re.ASCII)
        fields.check("os", os_value)


def test_trans_id_and_refund_id_formats() -> None:
    for _ in range(SAMPLES):
        trans_id = new_trans_id()
        assert re.fullmatch(r"[1-9][0-9]{9}", trans_id, flags=re.ASCII)
        fields.check("transId", trans_id)
        refund_id = new_refund_id()
        assert re.fullmatch(r"R[0-9]{11}", refund_id, flags=re.ASCII)
        assert len(refund_id) <= 12  # refunds.refund_id is a String(12)


def test_random_below_stays_in_range_and_reaches_every_value() -> None:
    draws = collections.Counter(random_below(7) for _ in range(7_000))
    assert set(draws) == set(range(7))
    # Each value 1,000 times on average; six standard deviations either side (about 30 each).
    assert all(800 < count < 1_200 for count in draws.values())
    assert all(0 <= random_below(9_000_000_000) < 9_000_000_000 for _ in range(SAMPLES))
    assert random_below(1) == 0


def test_random_below_rejects_the_uneven_top_of_its_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two bytes for a bound of 3: 65,536 values, and the last (65,535) would make 0 likelier than
    # 1 and 2. It is drawn again; keeping it would answer 65,535 % 3 == 0.
    given = iter([b"\xff\xff", b"\x00\x05"])
    monkeypatch.setattr(security.ssl, "RAND_bytes", lambda size: next(given))
    assert random_below(3) == 2


@pytest.mark.parametrize("bound", [0, -1])
def test_random_below_refuses_an_empty_range(bound: int) -> None:
    with pytest.raises(ValueError, match="above zero"):
        random_below(bound)


def test_a_forked_process_draws_trans_ids_of_its_own() -> None:
    # OpenSSL's generator reseeds in a forked child; should it not, parent and child would hand
    # out the same transIds.
    ours, theirs = _drawn_here_and_in_a_fork(new_trans_id, 4)
    assert len(theirs) == 4
    assert not set(theirs) & set(ours)


@pytest.mark.parametrize("count", [0, 1, 4, 16, 100])
def test_random_digits(count: int) -> None:
    value = random_digits(count)
    assert len(value) == count
    assert all(c in string.digits for c in value)


def test_leading_zero_digits_occur() -> None:
    # passCodes and transId tails may start with 0; a generator that never does loses entropy.
    assert any(random_digits(4).startswith("0") for _ in range(400))


# --- Keyed hashes and comparisons -------------------------------------------------------------


def test_keyed_hash_depends_on_key_and_value() -> None:
    digest = keyed_hash("k1", "900081818811241768175934")
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == keyed_hash("k1", "900081818811241768175934")
    assert digest != keyed_hash("k2", "900081818811241768175934")
    assert digest != keyed_hash("k1", "900081818811241768175935")


@settings(max_examples=200)
@given(key=st.text(max_size=80), value=st.text(max_size=600))
def test_keyed_hash_is_hmac_sha256(key: str, value: str) -> None:
    expected = hmac.digest(key.encode(), value.encode(), "sha256").hex()
    assert keyed_hash(key, value) == expected
    assert keyed_hash(key, value) == expected  # from the kept keyed state, unchanged by use


def test_keyed_hash_keeps_few_keys() -> None:
    for n in range(50):
        assert keyed_hash(f"key {n}", "v") == hmac.digest(f"key {n}".encode(), b"v", "sha256").hex()
    assert len(security._macs) <= security._MAC_KEYS_KEPT


def test_constant_time_equal() -> None:
    assert constant_time_equal("abc", "abc")
    assert not constant_time_equal("abc", "abd")
    assert not constant_time_equal("abc", "abcd")
    assert constant_time_equal("決済", "決済")
