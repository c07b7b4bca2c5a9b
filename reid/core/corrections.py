"""A reviewer's corrections replayed over a labels output: effective labels, and constraints for the next run.

The review log (:mod:`reid.core.contracts.review`) is replayed in order over the label rows (:class:`ReviewState`):
the result is each character instance's *reviewed* series identity, the identities' names and "not a
character" flags. :func:`corrections_for_relabel` turns it into what the next label run keeps
(:class:`Corrections`): every identity a reviewer touched becomes a *group* of character keys that must link
(at window and series level), and two different groups of a book never link (a reviewer kept them apart:
splits and "not the same" answers are recorded as such); each group carries its identity id and name so that
they stay stable, whatever the model version. Unreviewed instances cluster freely, and may join a group.

Plain Python and numpy over the labels table: no Ray, no web framework.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from reid.core.contracts.review import Action, effective_actions
from reid.core.errors import ReidError

UNIT_SEP = "#"
MEMBER_SEP = "@"


class ReviewActionError(ReidError, ValueError):
    """A review action that does not apply to the labels (an unknown identity, unit or member)."""


def unit_id(window_id: str, identity: int) -> str:
    """A window identity: ``<window_id>#<identity within the window>``."""
    return f"{window_id}{UNIT_SEP}{identity}"


def split_unit_id(unit: str) -> tuple[str, int]:
    """(window id, identity within the window) of a unit id made by :func:`unit_id`."""
    window, identity = unit.rsplit(UNIT_SEP, 1)
    return window, int(identity)


def member_id(char_key: str, window_id: str) -> str:
    """A character instance in a window: ``<char_key>@<window_id>``."""
    return f"{char_key}{MEMBER_SEP}{window_id}"


def split_member_id(member: str) -> tuple[str, str]:
    """(char_key, window id) of a member id made by :func:`member_id`."""
    char_key, window = member.rsplit(MEMBER_SEP, 1)
    return char_key, window


Identity = tuple[int, int]  # (series, series identity)


@dataclass
class ReviewState:
    """The labels with the review log applied so far (members are character instances in a window)."""

    series_of: dict[str, int]  # member -> series
    key_of: dict[str, str]  # member -> char_key
    unit_members: dict[str, list[str]]  # window identity -> members
    book: dict[str, int]  # member -> reviewed series identity
    ids: dict[Identity, set[str]]  # reviewed identity -> members
    names: dict[Identity, str] = field(default_factory=dict)
    extra: set[Identity] = field(default_factory=set)  # "not a character / unnamed extra"
    touched: set[Identity] = field(default_factory=set)
    answered: set[tuple] = field(default_factory=set)  # queue questions already answered
    apart: list[tuple[frozenset[str], frozenset[str]]] = field(default_factory=list)
    applied: int = 0

    @classmethod
    def from_labels(cls, labels: pa.Table, names: dict[Identity, str] | None = None) -> ReviewState:
        """The state before any action: ``labels`` needs series_id, window_id, char_key, identity,
        series_identity (unassigned rows, with null identities, are left out)."""
        state = cls({}, {}, defaultdict(list), {}, defaultdict(set), dict(names or {}))
        cols = [labels[c].to_pylist() for c in ("series_id", "window_id", "char_key", "identity",
                                                "series_identity")]
        for series, window, key, identity, book in zip(*cols, strict=True):
            if identity is None or book is None:
                continue
            member = member_id(key, window)
            if member in state.book:
                continue  # the face and the body of one character instance: one member
            state.series_of[member], state.key_of[member], state.book[member] = series, key, book
            state.unit_members[unit_id(window, identity)].append(member)
            state.ids[(series, book)].add(member)
        return state

    # -- reading ---------------------------------------------------------------------------------------

    def identity_of_unit(self, unit: str) -> Identity:
        """The reviewed identity of most of a window identity's members."""
        members = self._unit(unit)
        counts: dict[Identity, int] = defaultdict(int)
        for m in members:
            counts[(self.series_of[m], self.book[m])] += 1
        return max(counts.items(), key=lambda kv: (kv[1], -kv[0][1]))[0]

    def next_identity(self, series: int) -> int:
        return 1 + max((i for s, i in self.ids if s == series), default=-1)

    # -- actions ---------------------------------------------------------------------------------------

    def apply(self, action: Action) -> None:
        """Apply one action (validated before anything changes: a bad one raises and changes nothing)."""
        handler = getattr(self, f"_do_{action.kind}", None)
        if handler is None:
            raise ReviewActionError(f"action {action.id}: unknown kind {action.kind!r}")
        try:
            handler(action.payload)
        except (KeyError, TypeError, ValueError) as exc:
            which = f"action {action.id} ({action.kind})" if action.id else f"new {action.kind} action"
            if isinstance(exc, ReviewActionError):
                raise ReviewActionError(f"{which}: {exc}") from None
            raise ReviewActionError(f"{which}: bad payload "
                                    f"{json.dumps(action.payload)[:200]}: {exc!r}") from None
        self.applied += 1

    def _identity(self, series: Any, identity: Any) -> Identity:
        ident = (int(series), int(identity))
        if not self.ids.get(ident):
            raise ReviewActionError(f"series {series} has no identity {identity}")
        return ident

    def _unit(self, unit: str) -> list[str]:
        members = self.unit_members.get(str(unit))
        if not members:
            raise ReviewActionError(f"no window identity {unit!r} in these labels")
        return members

    def _members(self, payload: dict[str, Any]) -> list[str]:
        out = [m for u in payload.get("units", []) for m in self._unit(u)]
        for m in payload.get("members", []):
            if m not in self.book:
                raise ReviewActionError(f"no character instance {m!r} in these labels")
            out.append(m)
        if not out:
            raise ReviewActionError("no units or members given")
        series = {self.series_of[m] for m in out}
        if len(series) != 1:
            raise ReviewActionError(f"units and members of several series {sorted(series)}: one book at a time")
        return list(dict.fromkeys(out))

    def _reassign(self, members: list[str], target: Identity) -> None:
        for m in members:
            old = (self.series_of[m], self.book[m])
            self.ids[old].discard(m)
            if not self.ids[old]:
                del self.ids[old]
            self.book[m] = target[1]
            self.ids[target].add(m)

    def _merge(self, series: int, identities: list[Any]) -> Identity:
        idents = [self._identity(series, i) for i in identities]
        if len(set(idents)) < 2:
            raise ReviewActionError(f"merge needs two different identities, got {identities}")
        target = idents[0]
        for other in idents[1:]:
            if other == target:
                continue
            if other in self.names and target not in self.names:
                self.names[target] = self.names[other]
            if other in self.extra:
                self.extra.add(target)
            self._reassign(sorted(self.ids[other]), target)
            self.names.pop(other, None)
            self.extra.discard(other)
            self.touched.discard(other)
        self.touched.add(target)
        return target

    def _move(self, members: list[str], to: Any) -> Identity:
        series = self.series_of[members[0]]
        target = self._identity(series, to) if to is not None else (series, self.next_identity(series))
        sources = {(series, self.book[m]) for m in members} - {target}
        moved = frozenset(members)
        remaining = frozenset(m for s in sources for m in self.ids[s] if m not in moved)
        if remaining:
            self.apart.append((moved, remaining))
        self._reassign(members, target)
        self.touched |= {target, *(s for s in sources if s in self.ids)}
        return target

    def _do_merge(self, p: dict[str, Any]) -> None:
        self._merge(int(p["series"]), list(p["identities"]))

    def _do_move(self, p: dict[str, Any]) -> None:
        self._move(self._members(p), p.get("to"))

    def _do_name(self, p: dict[str, Any]) -> None:
        targets = [self._identity(s, i) for s, i in p["targets"]]
        name = str(p["name"]).strip()
        for t in targets:
            if name:
                self.names[t] = name
            else:
                self.names.pop(t, None)
            self.touched.add(t)

    def _do_extra(self, p: dict[str, Any]) -> None:
        value = bool(p.get("value", True))
        if "identity" in p:
            target = self._identity(p["series"], p["identity"])
        else:
            target = self._move(self._members(p), None)
        (self.extra.add if value else self.extra.discard)(target)
        self.touched.add(target)

    def _do_same(self, p: dict[str, Any]) -> None:
        a, b = self._identity(p["series"], p["a"]), self._identity(p["series"], p["b"])
        if p["answer"] not in ("yes", "no"):
            raise ReviewActionError(f"answer must be yes or no, got {p['answer']!r}")
        self.answered.add(("same", *sorted((a, b))))
        if p["answer"] == "yes":
            self._merge(a[0], [a[1], b[1]])
        else:
            self.apart.append((frozenset(self.ids[a]), frozenset(self.ids[b])))
            self.touched |= {a, b}

    def _do_belongs(self, p: dict[str, Any]) -> None:
        members = self._unit(p["unit"])
        own = self._identity(self.series_of[members[0]], p["identity"])
        if p["answer"] not in ("yes", "no"):
            raise ReviewActionError(f"answer must be yes or no, got {p['answer']!r}")
        self.answered.add(("belongs", str(p["unit"])))
        if p["answer"] == "yes":
            self.touched.add(own)
        else:
            other = p.get("other")
            self._move(members, None if other is None else int(other))


def replay(labels: pa.Table, actions: list[Action], names: dict[Identity, str] | None = None) -> ReviewState:
    """The state after every action of the log that counts (undone ones are skipped)."""
    state = ReviewState.from_labels(labels, names)
    for action in effective_actions(actions):
        state.apply(action)
    return state


def effective_columns(labels: pa.Table, state: ReviewState) -> pa.Table:
    """``labels`` plus reviewed_identity, name, not_character and reviewed (null for unassigned rows)."""
    reviewed, names, extra, touched = [], [], [], []
    for window, key, identity in zip(*(labels[c].to_pylist() for c in ("window_id", "char_key", "identity")),
                                     strict=True):
        member = member_id(key, window) if identity is not None else None
        book = state.book.get(member) if member else None
        ident = (state.series_of[member], book) if book is not None else None
        reviewed.append(book)
        names.append(state.names.get(ident, "") if ident else None)
        extra.append(ident in state.extra if ident else None)
        touched.append(ident in state.touched if ident else None)
    return (labels.append_column("reviewed_identity", pa.array(reviewed, pa.int64()))
            .append_column("name", pa.array(names, pa.string()))
            .append_column("not_character", pa.array(extra, pa.bool_()))
            .append_column("reviewed", pa.array(touched, pa.bool_())))


@dataclass
class Corrections:
    """What the next label run keeps: groups of character keys that must link (one per reviewed identity, with
    its id, name and flag), pairs of groups that must not, and where they came from."""

    groups: list[dict[str, Any]]  # {series, identity, name, not_character, keys}
    apart: list[tuple[int, int]]
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.group_of: dict[str, int] = {}
        for g, group in enumerate(self.groups):
            for key in group["keys"]:
                self.group_of.setdefault(key, g)
        self._apart = {(a, b) for a, b in self.apart} | {(b, a) for a, b in self.apart}

    def to_dict(self) -> dict[str, Any]:
        return {"groups": self.groups, "apart": [list(p) for p in self.apart], "source": self.source}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Corrections:
        return cls(data["groups"], [tuple(p) for p in data["apart"]], data.get("source", {}))

    def constraints(self, key_sets: list[set[str]]) -> tuple[np.ndarray, np.ndarray] | None:
        """(cannot_link, must_link) (N, N) bool over rows holding ``key_sets`` (a window's instances: one key
        each; a series' window identities: their members' keys); None when no row holds a reviewed key."""
        groups = [{self.group_of[k] for k in keys if k in self.group_of} for keys in key_sets]
        if not any(groups):
            return None
        n = len(groups)
        must, cannot = np.zeros((n, n), bool), np.zeros((n, n), bool)
        by_group: dict[int, list[int]] = defaultdict(list)
        for row, gs in enumerate(groups):
            for g in gs:
                by_group[g].append(row)
        for rows in by_group.values():
            for r in rows[1:]:
                must[rows[0], r] = must[r, rows[0]] = True
        held = [r for r, gs in enumerate(groups) if gs]
        for i, ra in enumerate(held):  # two reviewed identities of a book are two characters
            for rb in held[i + 1:]:
                if not groups[ra] & groups[rb]:
                    cannot[ra, rb] = cannot[rb, ra] = True
        return cannot, must & ~cannot


def corrections_from_state(state: ReviewState, source: dict[str, Any] | None = None) -> Corrections:
    """Every touched, named or flagged identity as a group of keys; the apart pairs between final groups."""
    kept = sorted((state.touched | set(state.names) | state.extra) & set(state.ids))
    index = {ident: g for g, ident in enumerate(kept)}
    groups = [{"series": s, "identity": i, "name": state.names.get((s, i), ""), "not_character": (s, i) in
               state.extra, "keys": sorted({state.key_of[m] for m in state.ids[(s, i)]})} for s, i in kept]
    apart: set[tuple[int, int]] = set()
    for moved, remaining in state.apart:
        side_a = {index.get((state.series_of[m], state.book[m])) for m in moved} - {None}
        side_b = {index.get((state.series_of[m], state.book[m])) for m in remaining} - {None}
        if side_a & side_b:
            continue  # the two sides were put together again later: the later decision wins
        apart |= {(min(a, b), max(a, b)) for a in side_a for b in side_b}
    return Corrections(groups, sorted(apart), dict(source or {}, actions=state.applied))


def stable_identities(labels: np.ndarray, key_sets: list[set[str]], corrections: Corrections, series: int
                      ) -> tuple[np.ndarray, dict[int, str]]:
    """Renumber one series' new identities so that each reviewed identity keeps its id: (N,) ids, names.

    A reviewed group's id goes to the new identity holding most of its keys; other identities take the
    smallest ids no reviewed identity holds."""
    votes: dict[tuple[int, int], int] = defaultdict(int)
    for label, keys in zip(labels, key_sets, strict=True):
        for k in keys:
            g = corrections.group_of.get(k)
            if g is not None and corrections.groups[g]["series"] == series:
                votes[(g, int(label))] += 1
    mapping: dict[int, int] = {}
    names: dict[int, str] = {}
    for (g, label), _ in sorted(votes.items(), key=lambda kv: -kv[1]):
        wanted = int(corrections.groups[g]["identity"])
        if label not in mapping and wanted not in mapping.values():
            mapping[label] = wanted
            if corrections.groups[g]["name"]:
                names[wanted] = corrections.groups[g]["name"]
    taken = set(mapping.values())
    free = (i for i in range(len(labels) + len(taken) + 1) if i not in taken)
    for label in dict.fromkeys(int(x) for x in labels):
        if label not in mapping:
            mapping[label] = next(free)
    return np.asarray([mapping[int(x)] for x in labels], np.int64), names
