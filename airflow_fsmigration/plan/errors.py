"""Plan errors that name the file, the line and the field path, all reported at once.

Also the input bounds whose breach is such an error: file size, text encoding, nesting depth
and alias expansion, so a hostile or broken file is refused by name instead of hanging or
crashing a command.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A message quotes the offending value; a megabyte of it would bury the location.
MAX_MESSAGE = 500


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.splitlines())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass(frozen=True)
class PlanIssue:
    """One problem in a plan: where it is and what to do about it."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        """``file:line: field.path: message`` on one line, however odd the input quoted in it."""
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {_one_line(self.path, 200)}:" if self.path else ""
        return f"{where}:{field} {_one_line(self.message, MAX_MESSAGE)}"


class PlanError(ValueError):
    """The plan is invalid; ``issues`` lists every problem found, in file order."""

    def __init__(self, issues: list[PlanIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line or 0, i.path))
        count = len(self.issues)
        lines = "\n".join(f"  {i}" for i in self.issues)
        super().__init__(f"the migration plan has {count} error{'s' if count != 1 else ''}:\n{lines}")


def _env_bytes(name: str, default: int) -> int:
    """A size limit from the environment; a malformed value keeps the default rather than crash."""
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


# Bounds that keep a hostile or broken file from hanging or crashing a command. A real plan
# is a few hundred kB, nests about 6 levels and uses aliases, if at all, for a few settings.
MAX_PLAN_BYTES = _env_bytes("FSMIG_PLAN_MAX_BYTES", 8 * 1024 * 1024)
MAX_SQL_BYTES = _env_bytes("FSMIG_SQL_MAX_BYTES", 1024 * 1024)
MAX_DEPTH = 32
# Values that aliases may add to a file beyond what is written out (a "billion laughs" file
# adds 10^9 from a few lines); counted while composing, before anything is expanded.
MAX_ALIAS_VALUES = 100_000


class InputRefused(Exception):
    """The file exceeds a structural bound; ``line`` is where the bound was crossed."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def bounded_composer() -> Any:
    """ruamel's composer, counting what aliases would expand to (ruamel bounds depth itself)."""
    from ruamel.yaml.composer import Composer
    from ruamel.yaml.events import AliasEvent
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    class BoundedComposer(Composer):  # type: ignore[misc]
        def compose_node(self, parent: Any, index: Any) -> Any:
            if not self.parser.check_event(AliasEvent):
                return super().compose_node(parent, index)
            mark = self.parser.peek_event().start_mark
            node = super().compose_node(parent, index)
            self.alias_values = getattr(self, "alias_values", 0) + self._size(node)
            if self.alias_values > MAX_ALIAS_VALUES:
                raise InputRefused(
                    mark.line + 1,
                    f"YAML aliases expand to more than {MAX_ALIAS_VALUES:,} values (an alias bomb?): "
                    "write the repeated values out or use fewer aliases",
                )
            return node

        def _size(self, node: Any) -> int:
            memo: dict[int, int] = self.__dict__.setdefault("sizes", {})
            key = id(node)
            if key not in memo:
                memo[key] = 1  # a recursive alias counts once instead of looping
                if isinstance(node, SequenceNode):
                    memo[key] = 1 + sum(self._size(child) for child in node.value)
                elif isinstance(node, MappingNode):
                    memo[key] = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
            return memo[key]

    return BoundedComposer


def read_text_file(path: Path, limit: int, what: str, knob: str) -> str:
    """A file's text, refused by name when it is too large, binary or not UTF-8.

    :raises InputRefused: with the line of the first offending byte where there is one.
    """
    try:
        size = path.stat().st_size
        if size > limit:
            raise InputRefused(
                1, f"{what} is {size:,} bytes, over the limit of {limit:,}: split it or set {knob}"
            )
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputRefused(1, f"cannot read the {what}: {exc.strerror or exc}") from None
    if len(data) > limit:  # grew since stat, or a device that reports no size
        raise InputRefused(1, f"{what} is over the limit of {limit:,} bytes: split it or set {knob}")
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise InputRefused(line, f"{what} is binary (a NUL byte at offset {nul}), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputRefused(
            line, f"{what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None
