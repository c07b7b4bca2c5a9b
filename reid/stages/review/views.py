"""What the review app shows: the corpus, a book, an identity, the queue of doubtful decisions, "more like this".

Plain functions of a :class:`~reid.stages.review.corpus.ReviewCorpus` that return JSON-ready dicts (the app serves them
as they are; the review simulator and the tests read the same). Distances are Euclidean between unit vectors,
as the label job's (window-identity centres, or the instances' own embeddings when the job stored them).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from reid.stages.review.corpus import Member, ReviewCorpus

THUMBS = 6


def _member_view(m: Member, distance: float | None = None) -> dict[str, Any]:
    return {"id": m.id, "unit": m.unit, "panel_id": m.panel_id, "face": m.face_id, "body": m.body_id,
            "boxes": m.boxes, "distance": None if distance is None else round(float(distance), 4)}


def _identity_meta(corpus: ReviewCorpus, series: int, identity: int) -> dict[str, Any]:
    key = (series, identity)
    state = corpus.state
    return {"series": series, "identity": identity, "name": state.names.get(key, ""),
            "not_character": key in state.extra, "reviewed": key in state.touched,
            "size": len(state.ids.get(key, ())), "units": len({corpus.members[m].unit for m in state.ids.get(key, ())})}


def books(corpus: ReviewCorpus) -> dict[str, Any]:
    """Every book (series) with its identities, instances and how much of it is reviewed."""
    with corpus.lock:
        corpus.sync()
        per: dict[int, dict[str, Any]] = defaultdict(lambda: {"identities": 0, "instances": 0, "reviewed": 0,
                                                              "named": 0})
        for (series, _), members in corpus.state.ids.items():
            per[series]["identities"] += 1
            per[series]["instances"] += len(members)
        for series, identity in corpus.state.touched:
            if (series, identity) in corpus.state.ids:
                per[series]["reviewed"] += len(corpus.state.ids[(series, identity)])
        for series, identity in corpus.state.names:
            if (series, identity) in corpus.state.ids:
                per[series]["named"] += 1
        rows = [{"series": s, **v} for s, v in sorted(per.items())]
        return {"books": rows, "actions": corpus.state.applied, "version": corpus.version,
                "labels": corpus.labels_root, "labels_run": corpus.labels_run,
                "model_version": corpus.model_version, "embeddings": corpus.has_embeddings}


def book(corpus: ReviewCorpus, series: int) -> dict[str, Any]:
    """One row per identity of a book: name, size, the most typical face and body crops."""
    with corpus.lock:
        corpus.sync()
        idents, centres, inverse = corpus.centres(series)
        if not idents:
            return {"series": series, "identities": []}
        rows = np.flatnonzero(corpus.member_series == series)
        distances = np.linalg.norm(corpus.member_vectors[rows] - centres[inverse], axis=1)
        order = np.lexsort((distances, inverse))
        typical: dict[int, list[int]] = defaultdict(list)
        for r in order:
            typical[int(inverse[r])].append(int(rows[r]))
        out = []
        for k, (_, identity) in enumerate(idents):
            members = [corpus.members[corpus.member_ids[r]] for r in typical[k]]
            out.append({**_identity_meta(corpus, series, identity),
                        "faces": [m.face_id for m in members if m.face_id][:THUMBS],
                        "bodies": [m.body_id for m in members if m.body_id][:THUMBS]})
        out.sort(key=lambda r: (-r["size"], r["identity"]))
        return {"series": series, "identities": out, "version": corpus.version}


def identity(corpus: ReviewCorpus, series: int, identity_: int) -> dict[str, Any]:
    """Every instance of one identity, most typical (nearest its centre) first, least typical last."""
    with corpus.lock:
        corpus.sync()
        idents, centres, inverse = corpus.centres(series)
        if (series, identity_) not in idents:
            return {**_identity_meta(corpus, series, identity_), "members": []}
        k = idents.index((series, identity_))
        rows = np.flatnonzero(corpus.member_series == series)[inverse == k]
        distances = np.linalg.norm(corpus.member_vectors[rows] - centres[k], axis=1)
        members = [_member_view(corpus.members[corpus.member_ids[r]], d)
                   for d, r in sorted(zip(distances, rows, strict=True))]
        others = [{"identity": i, "name": corpus.state.names.get((series, i), "")} for _, i in idents
                  if i != identity_]
        return {**_identity_meta(corpus, series, identity_), "members": members, "others": others,
                "version": corpus.version}


def _apart_pairs(corpus: ReviewCorpus) -> set[tuple]:
    state = corpus.state
    out = set()
    for a, b in state.apart:
        side_a = {(state.series_of[m], state.book[m]) for m in a}
        side_b = {(state.series_of[m], state.book[m]) for m in b}
        out |= {tuple(sorted((x, y))) for x in side_a for y in side_b if x != y}
    return out


def queue(corpus: ReviewCorpus, limit: int = 20, series_filter: int | None = None) -> list[dict[str, Any]]:
    """The most doubtful decisions, most doubtful first: pairs of identities near the link threshold ("the same
    character?") and window identities near another identity ("does it belong here?").

    Doubt is in link thresholds: a pair at distance d scores |d - t| / t (pairs that share a panel with two
    characters are never asked); a window identity (d_other - d_own) / t, negative when it is nearer the other
    identity than its own: those come first. Answered questions are not asked again."""
    with corpus.lock:
        corpus.sync()
        t = corpus.link_threshold
        apart = _apart_pairs(corpus)
        items: list[dict[str, Any]] = []
        series_list = sorted({s for s, _ in corpus.state.ids}) if series_filter is None else [series_filter]
        for series in series_list:
            idents, centres, _ = corpus.centres(series)
            if len(idents) < 2:
                continue
            d = np.linalg.norm(centres[:, None] - centres[None], axis=2)
            conflicts = _panel_conflicts(corpus, idents) if (d < t).any() else set()
            for i, j in zip(*np.triu_indices(len(idents), 1), strict=True):
                a, b = idents[i], idents[j]
                if ("same", a, b) in corpus.state.answered or (a, b) in apart or (a, b) in conflicts:
                    continue
                items.append({"type": "same", "series": series, "a": a[1], "b": b[1],
                              "distance": round(float(d[i, j]), 4), "doubt": float(abs(d[i, j] - t) / t)})
            items += _unit_questions(corpus, series, idents, centres, t)
        items.sort(key=lambda q: q["doubt"])
        return [_with_thumbs(corpus, q) for q in items[:limit]]


def _panel_conflicts(corpus: ReviewCorpus, idents: list[tuple[int, int]]) -> set[tuple]:
    """Pairs of identities holding two different characters of one panel (never one character)."""
    holders: dict[str, dict[str, set[tuple[int, int]]]] = defaultdict(lambda: defaultdict(set))
    for ident in idents:
        for m in corpus.state.ids[ident]:
            holders[corpus.members[m].panel_id][corpus.state.key_of[m]].add(ident)
    out = set()
    for by_key in holders.values():
        for k1, k2 in ((k1, k2) for k1 in by_key for k2 in by_key if k1 < k2):
            out |= {tuple(sorted((x, y))) for x in by_key[k1] for y in by_key[k2] if x != y}
    return out


def _unit_questions(corpus: ReviewCorpus, series: int, idents: list[tuple[int, int]], centres: np.ndarray,
                    t: float) -> list[dict[str, Any]]:
    state = corpus.state
    index = {ident: k for k, ident in enumerate(idents)}
    units = sorted({corpus.members[m].unit for (s, _), ms in state.ids.items() if s == series for m in ms})
    out = []
    for unit in units:
        if ("belongs", unit) in state.answered:
            continue
        own = state.identity_of_unit(unit)
        if len(state.ids[own]) == len(state.unit_members[unit]):
            continue  # the unit is its identity: that is a "same character?" question
        vector = corpus.unit_vectors[corpus.unit_index[unit]]
        d = np.linalg.norm(centres - vector, axis=1)
        d_own = d[index[own]]
        d[index[own]] = np.inf
        other = int(np.argmin(d))
        if np.isfinite(d[other]):
            out.append({"type": "belongs", "series": series, "unit": unit, "identity": own[1],
                        "other": idents[other][1], "distance": round(float(d_own), 4),
                        "other_distance": round(float(d[other]), 4), "doubt": float((d[other] - d_own) / t)})
    return out


def _with_thumbs(corpus: ReviewCorpus, q: dict[str, Any]) -> dict[str, Any]:
    state, series = corpus.state, q["series"]

    def thumbs(members: list[str]) -> list[str]:
        ms = [corpus.members[m] for m in sorted(members)][:THUMBS]
        return [m.face_id or m.body_id for m in ms]

    if q["type"] == "same":
        q["a_thumbs"] = thumbs(state.ids[(series, q["a"])])
        q["b_thumbs"] = thumbs(state.ids[(series, q["b"])])
        q["a_name"], q["b_name"] = state.names.get((series, q["a"]), ""), state.names.get((series, q["b"]), "")
    else:
        q["unit_thumbs"] = thumbs(state.unit_members[q["unit"]])
        q["identity_thumbs"] = thumbs(state.ids[(series, q["identity"])])
        q["other_thumbs"] = thumbs(state.ids[(series, q["other"])])
    return q


def similar(corpus: ReviewCorpus, member: str = "", series: int | None = None, identity_: int | None = None,
            k: int = 24) -> dict[str, Any]:
    """The ``k`` instances nearest an instance (its stored embedding, else its window identity's centre) or
    an identity's centre, across the whole corpus (exact search in numpy)."""
    with corpus.lock:
        corpus.sync()
        if member:
            if member not in corpus.member_row:
                from reid.core.corrections import ReviewActionError

                raise ReviewActionError(f"no character instance {member!r}")
            query, exclude = corpus.member_vectors[corpus.member_row[member]], {member}
        else:
            idents, centres, _ = corpus.centres(int(series or 0))
            if (series, identity_) not in idents:
                from reid.core.corrections import ReviewActionError

                raise ReviewActionError(f"series {series} has no identity {identity_}")
            query = centres[idents.index((series, identity_))]
            exclude = set(corpus.state.ids[(series, identity_)])
        d = np.linalg.norm(corpus.member_vectors - query, axis=1)
        out = []
        for r in np.argsort(d, kind="stable"):
            m = corpus.member_ids[r]
            if m in exclude:
                continue
            view = _member_view(corpus.members[m], d[r])
            out.append({**view, "series": corpus.members[m].series, "identity": corpus.state.book[m]})
            if len(out) >= k:
                break
        return {"query": member or f"{series}/{identity_}", "members": out}
