"""What a fake process does: a command read as a small script of steps (print, sleep, echo
stdin, exit), so the scale harness can ask for an amount of output, a wait or an exit code in
the command it sends, as it would of bash, and its output goes through the real runner.

The language (anything else is "command not found", exit 127, as bash says it):

- ``a; b`` runs both, ``a && b`` runs b only if a exited 0 (no other shell syntax);
- ``echo [-n] WORDS...``, ``true``, ``false``, ``exit [N]``, ``sleep SECONDS``,
  ``seq [FIRST] LAST`` (as coreutils prints them), ``cat`` (stdin to stdout until it closes);
- ``fake-out BYTES [CHUNK]``: BYTES bytes of lines of 99 ``a`` and a newline, handed to the
  runner CHUNK bytes at a time (default 4096: what a pipe gives a reader behind stdio);
- a trailing ``>&2`` sends that command's output to stderr; other shell syntax (pipes,
  redirections to files, subshells) is refused with exit 2.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass

from shared.output import STDERR, STDOUT

# Bounds: the fake runs in the harness's worker processes, whatever the command asks.
MAX_OUTPUT = 256 << 20
MAX_CHUNK = 256 << 10
MAX_SLEEP = 86400.0
MAX_SEQ = 1_000_000  # numbers one seq prints (some 7 MB)
MAX_STEPS = 64
DEFAULT_CHUNK = 4096
LINE = b"a" * 99 + b"\n"
# Shell operators: split from words (";" and "&&" are understood, ">&2" at a command's end).
_PUNCTUATION = ";&|<>()"


@dataclass(frozen=True)
class Print:
    kind: str  # STDOUT or STDERR
    data: bytes = b""
    # fake-out: ``size`` bytes generated (not held) and handed over ``chunk`` at a time
    size: int = 0
    chunk: int = DEFAULT_CHUNK

    def chunks(self) -> Iterator[bytes]:
        if self.data:
            yield self.data
            return
        # One stream of lines across the chunks: each chunk goes on where the last one ended.
        pattern = LINE * (self.chunk // len(LINE) + 2)
        at = 0
        while at < self.size:
            n = min(self.chunk, self.size - at)
            start = at % len(LINE)
            yield pattern[start : start + n]
            at += n


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Cat:
    kind: str


@dataclass(frozen=True)
class Exit:
    """The command's exit status (``final``: ``exit``, the rest of the script is not run)."""

    code: int
    final: bool = False


Step = Print | Sleep | Cat | Exit


@dataclass(frozen=True)
class Command:
    steps: tuple[Step, ...]
    then: str  # how the next command runs: ";" always, "&&" only after exit 0


def parse(cmd: str) -> list[Command]:
    """The commands of ``cmd`` in order. A command that does not parse (unbalanced quotes,
    an unknown name, a bad number) becomes bash's error and exit 127 or 2, never an
    exception; past MAX_STEPS commands the rest is dropped."""
    lexer = shlex.shlex(cmd, posix=True, punctuation_chars=_PUNCTUATION)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return [Command((Print(STDERR, b"bash: syntax error\n"), Exit(2)), ";")]
    commands: list[Command] = []
    words: list[str] = []
    for token in [*tokens, ";"]:
        if token in (";", "&&"):
            if words:
                commands.append(Command(_steps(words), token))
            words = []
            if len(commands) >= MAX_STEPS:
                break
            continue
        words.append(token)
    return commands


def _steps(words: list[str]) -> tuple[Step, ...]:
    kind = STDOUT
    if words[-2:] == [">&", "2"]:
        kind, words = STDERR, words[:-2]
    if not words:
        return (Exit(0),)
    if any(w and w[0] in _PUNCTUATION for w in words):
        return (Print(STDERR, b"bash: the fake backend does not run this syntax\n"), Exit(2))
    name, args = words[0], words[1:]
    try:
        return _command(name, args, kind)
    except ValueError:
        return (Print(STDERR, f"{name}: invalid argument\n".encode()), Exit(2))


def _command(name: str, args: list[str], kind: str) -> tuple[Step, ...]:
    """Raises ValueError for an argument out of range or not a number."""
    if name == "echo":
        newline = args[:1] != ["-n"]
        text = " ".join(args[0 if newline else 1 :]) + ("\n" if newline else "")
        return (Print(kind, text.encode()), Exit(0)) if text else (Exit(0),)
    if name in ("true", ":"):
        return (Exit(0),)
    if name == "false":
        return (Exit(1),)
    if name == "exit":
        return (Exit(_bounded(args[0], 0, 255) if args else 0, final=True),)
    if name == "sleep" and len(args) == 1:
        return (Sleep(_seconds(args[0])), Exit(0))
    if name == "seq" and 1 <= len(args) <= 2:
        first = _bounded(args[0], -MAX_SEQ, MAX_SEQ) if len(args) == 2 else 1
        last = _bounded(args[-1], -MAX_SEQ, MAX_SEQ)
        if last - first >= MAX_SEQ:
            raise ValueError("too many numbers")
        numbers = "".join(f"{i}\n" for i in range(first, last + 1)).encode()
        return (Print(kind, numbers), Exit(0)) if numbers else (Exit(0),)
    if name == "cat" and not args:
        return (Cat(kind), Exit(0))
    if name == "fake-out" and 1 <= len(args) <= 2:
        size = _bounded(args[0], 0, MAX_OUTPUT)
        chunk = _bounded(args[1], 1, MAX_CHUNK) if len(args) == 2 else DEFAULT_CHUNK
        return (Print(kind, size=size, chunk=chunk), Exit(0))
    return (Print(STDERR, f"bash: line 1: {name[:200]}: command not found\n".encode()), Exit(127))


def _bounded(raw: str, low: int, high: int) -> int:
    value = int(raw)
    if not low <= value <= high:
        raise ValueError(f"{value} not in {low}..{high}")
    return value


def _seconds(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= MAX_SLEEP:  # NaN fails both comparisons
        raise ValueError(f"{raw} seconds")
    return value
