"""Stop requests wait for the step: SIGTERM and Ctrl-C inside `deferred_stop` only set a flag."""

from __future__ import annotations

import signal

import pytest

from free_bench.core.interrupt import deferred_stop


def test_sigterm_waits_for_the_block_then_exits_143():
    before = signal.getsignal(signal.SIGTERM)
    reached = []
    with pytest.raises(SystemExit) as err:
        with deferred_stop() as stop:
            assert not stop
            signal.raise_signal(signal.SIGTERM)
            reached.append(bool(stop))  # still running: the request is only recorded
            signal.raise_signal(signal.SIGTERM)  # repeated (a parent passing it on): still waits
            reached.append(stop.signum)
    assert reached == [True, signal.SIGTERM]
    assert err.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_ctrl_c_twice_stops_at_once():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_stop():
            signal.raise_signal(signal.SIGINT)
            reached.append("after first")
            signal.raise_signal(signal.SIGINT)
            reached.append("after second")
    assert reached == ["after first"]


def test_a_loop_acts_on_the_request_itself():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_stop() as stop:
            for step in range(5):
                steps.append(step)
                if step == 1:
                    signal.raise_signal(signal.SIGINT)
                if stop:
                    stop.exit()
    assert steps == [0, 1]


def test_disabled_leaves_signals_alone():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with deferred_stop(enabled=False) as stop:
            signal.raise_signal(signal.SIGTERM)
            assert not stop
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
