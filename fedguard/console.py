"""What fedguard shows of Flower's output (#17.8): no colour codes, no DEBUG lines, no
tracebacks (Flower prints each one twice; fedguard's own one-line reason names the file
that holds it) unless ``--verbose``. Nothing is lost: the launchers keep Flower's raw
output in a file in the state folder. No torch, no Flower import."""

from __future__ import annotations

import os
import re

__all__ = [
    "VERBOSE_ENV",
    "FlowerLines",
    "is_verbose",
    "printable",
    "set_verbose",
    "strip_ansi",
]

# Set by `--verbose` and inherited by every process fedguard starts (the demo's server
# and nodes, their Flower children).
VERBOSE_ENV = "FEDGUARD_VERBOSE"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_STAMP = r"(?:\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:)?"
_DEBUG = re.compile(rf"^{_STAMP}DEBUG\b")
_EMPTY_INFO = re.compile(rf"^{_STAMP}INFO\s*:?\s*$")
_TRACEBACK = "Traceback (most recent call last):"


def set_verbose(verbose: bool) -> None:
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


class FlowerLines:
    """A filter for one stream of Flower output, fed line by line (it keeps state: a
    traceback spans lines). ``raw_log`` is where the unfiltered output is kept."""

    def __init__(self, *, raw_log: str, verbose: bool | None = None) -> None:
        self.raw_log = raw_log
        self.verbose = is_verbose() if verbose is None else verbose
        self._in_traceback = False
        self._told = False

    def feed(self, line: str) -> str | None:
        """The line to show (colour codes removed), or None."""
        line = strip_ansi(line.rstrip("\r\n"))
        if self.verbose:
            return line
        if self._in_traceback:
            if line[:1] in (" ", "\t", "") or line.startswith(("During handling", "The above")):
                return None
            self._in_traceback = False  # the exception's own line ends the block
            return None
        if line.startswith(("During handling", "The above exception")):  # between two
            return None
        if line.strip() == _TRACEBACK or line.endswith(_TRACEBACK):
            self._in_traceback = True
            if self._told:
                return None
            self._told = True
            return f"(a Flower traceback, not shown: see {self.raw_log}, or use --verbose)"
        if _DEBUG.match(line) or _EMPTY_INFO.match(line):
            return None
        return line


def printable(text: object, *, limit: int = 200) -> str:
    """``text`` safe to print on one console line: control and other unprintable
    characters (newline, carriage return, escape sequences) written as escapes, cut to
    ``limit`` characters. Everything a node reports goes through this before it is
    printed or logged: a name or reason with a newline could forge a console line."""
    s = str(text)
    out = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in s[: limit + 1])
    return out if len(out) <= limit else out[: limit - 1] + "…"
