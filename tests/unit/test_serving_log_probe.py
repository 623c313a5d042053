"""The readiness probe of the log: each wait bounded even when the backend hangs, one ping at a time."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tl_platform.serving.log_availability import LogProbe


def test_a_hung_ping_times_out_and_later_probes_wait_on_it_instead_of_starting_more() -> None:
    release = threading.Event()
    calls = 0

    def ping() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            assert release.wait(10)

    async def run() -> list[float]:
        probe = LogProbe(ping, timeout_s=0.2)
        waits = []
        for _ in range(3):
            started = time.perf_counter()
            with pytest.raises(TimeoutError):
                await probe.check()
            waits.append(time.perf_counter() - started)
        assert calls == 1  # the hung ping is awaited again: one thread held, not one per probe
        release.set()
        await probe.check()  # the hung ping returned: fine now
        await probe.check()  # and the next probe pings afresh
        return waits

    waits = asyncio.run(run())
    assert all(0.15 <= w < 2 for w in waits), waits
    assert calls == 2


def test_a_failing_ping_raises_its_error_and_the_next_probe_retries() -> None:
    outcomes = iter([ConnectionRefusedError("refused"), None])

    def ping() -> None:
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    async def run() -> None:
        probe = LogProbe(ping, timeout_s=5)
        with pytest.raises(ConnectionRefusedError, match="refused"):
            await probe.check()
        await probe.check()

    asyncio.run(run())
