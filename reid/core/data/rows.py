"""What a reader does with a bad row of a large input: record it and go on, or stop (``--strict``), and when a
file has so many bad rows that it must be the wrong file."""

from __future__ import annotations

from dataclasses import dataclass

from reid.core.errors import DataFormatError


@dataclass(frozen=True)
class BadRow:
    """One input row (CSV line) or entry (JSON sequence) that a job skipped, and why."""

    source: str
    where: str
    reason: str

    def as_error(self, stage: str) -> dict[str, str]:
        """This row as a row of the jobs' error tables (:data:`reid.core.contracts.manifest.ERROR_SCHEMA`)."""
        return {"id": self.where, "shard": "", "stage": stage, "source": self.source, "reason": self.reason}


@dataclass(frozen=True)
class RowPolicy:
    """What a reader does with a bad row: ``strict`` raises at the first one; otherwise bad rows are collected
    (the caller records them in its job's error table) and the file is refused only when more than
    ``max_bad_fraction`` of its rows are bad (then it is the wrong file, not a few odd rows)."""

    strict: bool = False
    max_bad_fraction: float = 0.01

    def check(self, source: str, bad: list[BadRow], total: int, unit: str = "rows") -> None:
        """Refuse ``source`` when too many of its ``total`` rows are bad."""
        if bad and len(bad) > self.max_bad_fraction * max(total, 1):
            first = "; ".join(f"{b.where}: {b.reason}" for b in bad[:3])
            raise DataFormatError(source, f"{len(bad)} of {total} {unit} are bad (more than "
                                  f"--max-bad-row-fraction {self.max_bad_fraction:g}): is this the right file? "
                                  f"First: {first}")
