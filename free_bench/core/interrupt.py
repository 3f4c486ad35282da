"""Stop requests (SIGTERM from `timeout`, Ctrl-C) honoured at the next training step, after a checkpoint.

Long runs are cut and resumed by design (one H200 command may run 10 minutes). A signal that kills a
run mid-step loses every step since the last periodic checkpoint (the gpu reproduce at commit cc101e5 lost about
140 s of pretraining that way); deferred to the end of the step, it costs one checkpoint write. A second
Ctrl-C while the first waits stops at once, so a hung step can still be interrupted; a repeated SIGTERM
keeps waiting (a parent that passes on the signal its process group already got must not cut the
checkpoint short), and SIGKILL (`timeout -k`) is the hard stop.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import NoReturn


class StopRequest:
    """Set by the handler; a loop polls it (`if stop:`) between steps, checkpoints, then `stop.exit()`."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def exit(self) -> NoReturn:
        """Leave as the signal would have (SIGINT: KeyboardInterrupt; others: exit status 128 + signal)."""
        assert self.signum is not None
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + self.signum)


@contextlib.contextmanager
def deferred_stop(enabled: bool = True) -> Iterator[StopRequest]:
    """Within the block, SIGTERM and SIGINT only set the yielded `StopRequest`.

    Off the main thread (where Python cannot install handlers) or with `enabled=False` (several
    processes that must stop together), signals keep their usual effect and the request stays unset.
    A request the block did not act on is acted on when the block ends."""
    stop = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, frame: object) -> None:
        again = signum == signal.SIGINT and stop.signum == signal.SIGINT
        stop.signum = stop.signum or signum
        if again:  # Ctrl-C twice: do not wait for the step any longer
            stop.exit()

    for s in previous:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if stop:
        stop.exit()
