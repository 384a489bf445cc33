"""What the fuzz tests share: bounded, derandomised hypothesis settings, a hang guard and
byte mutations (``tests`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

__all__ = ["FUZZ", "HANG_S", "NASTY_TOKENS", "Hang", "mutated", "no_hang", "only"]

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HANG_S = 5.0


class Hang(BaseException):
    """Not an Exception: no decoder's ``except Exception`` can swallow it."""


@contextlib.contextmanager
def no_hang(seconds: float = HANG_S) -> Iterator[None]:
    def alarm(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def only(error: type[Exception], call: Callable[[], object]) -> object:
    """``call()``'s result, or None when it raised ``error``; anything else propagates."""
    with no_hang():
        try:
            return call()
        except error as exc:
            assert str(exc) and "\n" not in str(exc).strip(), repr(exc)  # one line
            return None


# ---------------------------------------------------------------- mutations


# Spliced in by mutations: what breaks parsers (overflow, recursion, encodings).
NASTY_TOKENS = [b"e999", b"9" * 5000, b"[" * 3000, b"{" * 3000, b"NaN", b"\xff", b"\\ud800", b"\0"]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with flipped bytes, a cut, an insertion or a deletion (at least one)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(0, len(out) - 1)))
        if kind == "flip" and out:
            out[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del out[at:]
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(NASTY_TOKENS))
        elif out:
            del out[at : at + draw(st.integers(1, 16))]
    return bytes(out)
