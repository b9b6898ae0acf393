"""With the sandbox off (the default), a service without a provider account is refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from kessai.connectors.base import AccountUnusable

if TYPE_CHECKING:
    from conftest import Harness


@pytest.mark.parametrize("flow", ["request", "qr"])
def test_no_provider_account_and_no_sandbox_is_refused_before_any_payment(
    make_harness: Callable[..., Harness], flow: str
) -> None:
    # Before, such a payment went to the sandbox, whose "success" code completed it without any
    # money moving: a free purchase at a real shop.
    h = make_harness(sandbox_enabled=False)
    till = h.till()
    code = h.codes("03", "success")[0]
    with pytest.raises(AccountUnusable) as caught:
        if flow == "request":
            till.request(99_999, code=code)
        else:
            till.qr(1000, service_id="03")
    assert caught.value.code == "SERVICE_NOT_SUPPORTED"
    assert caught.value.field == "serviceId"
    assert "sandbox wallets are turned off" in str(caught.value)
    assert h.table("payments") == []
    assert h.table("sandbox_charges") == []
    assert [c["used_at"] for c in h.table("sandbox_codes")] == [None]
