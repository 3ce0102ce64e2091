"""Failpoint parsing and actions."""

from __future__ import annotations

import time

import pytest

from pageserver import failpoints


def test_parse_spec() -> None:
    spec = failpoints.parse_spec("virtual-file-write=return(28);layer-before-rename=exit; flush-before-dcl-update=sleep(5);virtual-file-fsync=panic")
    assert spec["virtual-file-write"] == failpoints.Action("return", 28)
    assert spec["layer-before-rename"] == failpoints.Action("exit")
    assert spec["flush-before-dcl-update"] == failpoints.Action("sleep", 5)
    assert spec["virtual-file-fsync"] == failpoints.Action("panic")


@pytest.mark.parametrize("bad", ["nope=exit", "virtual-file-write", "virtual-file-write=explode", "virtual-file-write=return(x)"])
def test_bad_specs(bad: str) -> None:
    with pytest.raises(ValueError):
        failpoints.parse_spec(bad)


async def test_return_and_sleep_and_off() -> None:
    failpoints.configure({"virtual-file-write": "return(5)"})
    with pytest.raises(OSError) as info:
        await failpoints.failpoint("virtual-file-write")
    assert info.value.errno == 5
    assert failpoints.hits("virtual-file-write") == 1
    failpoints.configure({"virtual-file-write": "sleep(30)"})
    t0 = time.monotonic()
    await failpoints.failpoint("virtual-file-write")
    assert time.monotonic() - t0 >= 0.025
    failpoints.configure({"virtual-file-write": "off"})
    await failpoints.failpoint("virtual-file-write")
    assert failpoints.hits("virtual-file-write") == 0
