"""The exception the CLI turns into one line and an exit status, and every exit status in one place."""

import signal

EXIT_OK = 0
EXIT_ERROR = 1  # nothing could start: bad input (recipe, data, weights, option)
EXIT_PARTIAL = 3  # batch work: some files failed (each is named); the rest were done


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (130 SIGINT, 143 SIGTERM)."""
    return 128 + int(signum)


def reason(e: BaseException) -> str:
    """An exception as one line for a report: its type and its message's first line."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class TranslateError(Exception):
    """A problem with the user's input (recipe, data, weights): shown as one line, no traceback."""

    exit_code = EXIT_ERROR


class Interrupted(TranslateError):
    """Work stopped at a safe point after SIGINT/SIGTERM; the message says what was kept and how to go on."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}; {message}")
        self.signum = signum
        self.exit_code = exit_code(signum)


class PartialFailures:
    """What the summary of batch work shares: ``failed`` lists (file, reason); exit 3 when any failed."""

    failed: list[tuple[str, str]]

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.failed else EXIT_OK
