"""vigil.contain: one message's failure stays that message's (pure)."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from vigil.contain import MAX_REASON, Failed, contain, contain_async
from vigil.messages import InvalidMessage


def boom(exc: BaseException):
    def work():
        raise exc

    return work


def test_a_value_passes_through():
    assert contain(lambda: 42, what="x") == 42


def test_a_contract_violation_fails_the_message_with_its_reason():
    assert contain(boom(InvalidMessage("value must be finite")), what="parsing") == Failed(
        "value must be finite", unexpected=False
    )


@pytest.mark.parametrize(
    "exc",
    [RecursionError("deep"), OverflowError("int too large"), ValueError("x"), KeyError("k")],
)
def test_any_other_exception_fails_the_message_as_unexpected(exc):
    result = contain(boom(exc), what="storing the readings", subject="vigil/data/d")
    assert isinstance(result, Failed) and result.unexpected
    assert result.reason.startswith(f"storing the readings failed: {type(exc).__name__}: ")


def test_dependency_failures_propagate():
    with pytest.raises(sqlite3.OperationalError):
        contain(
            boom(sqlite3.OperationalError("disk I/O error")), what="x", passthrough=(sqlite3.Error,)
        )
    with pytest.raises(KeyboardInterrupt):  # not an Exception: never contained
        contain(boom(KeyboardInterrupt()), what="x")


def test_reasons_are_bounded():
    result = contain(boom(ValueError("v" * 10_000)), what="x")
    assert isinstance(result, Failed) and len(result.reason) == MAX_REASON


def test_the_async_form_behaves_alike():
    async def ok():
        return "sent"

    async def bad():
        raise RuntimeError("template broke")

    assert asyncio.run(contain_async(ok, what="emailing")) == "sent"
    result = asyncio.run(contain_async(bad, what="emailing"))
    assert isinstance(result, Failed) and "RuntimeError: template broke" in result.reason
