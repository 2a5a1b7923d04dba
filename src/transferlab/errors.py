"""Errors that the entry points turn into one clear message and a non-zero exit, before any training."""


class ConfigError(ValueError):
    """One or more configuration problems; each line names the key, the value and what is allowed."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def problem(key: str, value, allowed: str) -> str:
    """Format one problem line: which key, what value, what is allowed."""
    return f"{key}={value!r}: {allowed}"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf: the run cannot recover, so it fails with the reason."""
