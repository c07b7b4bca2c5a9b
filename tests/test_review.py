"""The review app on a real uvicorn server (127.0.0.1) over a real label run: the token, every action through
the HTTP API, the queue, "more like this", concurrent writers, the exports, and the next label run keeping the
corrections (``--corrections``), also with another model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from helpers.labeling import label_config

from reid.core.contracts.review import ReviewLog, read_applied_corrections
from reid.core.corrections import split_unit_id
from reid.core.data.formats import read_sequences
from reid.core.errors import ConfigError
from reid.core.models import ModelConfig, ReIDNet, save_model_checkpoint
from reid.stages.label import read_labels, run_label
from reid.stages.review import effective_labels, export_labels, export_sequences
from reid.stages.review.config import ReviewConfig
from reid.stages.review.export import plain_boxes
from reid.stages.review.serve import start_in_background

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.slow]
THRESHOLDS = (0.5, 0.6)


class Client:
    """A tiny HTTP client of the app: JSON in and out, the token in a header (or not)."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base, self.token = base, token

    def call(self, path: str, body: dict | None = None) -> tuple[int, object]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["X-Review-Token"] = self.token
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                kind = response.headers.get_content_type()
                return response.status, json.loads(raw) if kind == "application/json" else raw
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def get(self, path: str):
        status, out = self.call(path)
        assert status == 200, (path, status, out)
        return out

    def act(self, kind: str, **payload):
        status, out = self.call("/api/actions", {"kind": kind, "payload": payload})
        assert status == 200, (kind, payload, out)
        return out["action"]


@pytest.fixture()
def app(review_labels, tmp_path):
    running = start_in_background(ReviewConfig(labels=str(review_labels["labels"]), crops=str(review_labels["crops"]),
                                               port=0, db=str(tmp_path / "review.db")))
    yield running
    running.stop()


def identities(client: Client, series: int) -> dict[int, dict]:
    return {row["identity"]: row for row in client.get(f"/api/books/{series}")["identities"]}


def first_series(client: Client) -> int:
    return client.get("/api/books")["books"][0]["series"]


def test_every_request_needs_the_token(app) -> None:
    assert Client(app.base, None).call("/api/books")[0] == 401
    assert Client(app.base, "wrong").call("/api/books")[0] == 401
    assert Client(app.base, None).call("/")[0] == 401
    assert Client(app.base, None).call("/api/actions", {"kind": "undo", "payload": {}})[0] == 401
    assert Client(app.base, app.token).call("/api/books")[0] == 200
    with urllib.request.urlopen(app.url, timeout=30) as page:  # the printed URL: the page, and a cookie
        assert page.status == 200 and b"/static/app.js" in page.read()
        cookie = page.headers["set-cookie"].split(";")[0]
    request = urllib.request.Request(app.base + "/static/app.js", headers={"Cookie": cookie})
    with urllib.request.urlopen(request, timeout=30) as script:
        assert script.status == 200 and b"api/actions" in script.read()


def test_every_action_through_the_api_and_undo(app) -> None:
    client = Client(app.base, app.token)
    series = first_series(client)
    before = identities(client, series)
    a, b, c = sorted(before)[:3]
    merged = client.act("merge", series=series, identities=[a, b])
    assert merged["labels_run"] and merged["model_version"] and merged["at"]
    after = identities(client, series)
    assert b not in after and after[a]["size"] == before[a]["size"] + before[b]["size"]
    client.act("name", targets=[[series, a]], name="Hero")
    view = client.get(f"/api/books/{series}/identities/{a}")
    assert view["name"] == "Hero" and view["reviewed"]
    distances = [m["distance"] for m in view["members"]]
    assert distances == sorted(distances)  # most typical first
    unit = view["members"][-1]["unit"]
    client.act("move", series=series, units=[unit], to=None)
    new = max(identities(client, series))
    assert client.get(f"/api/books/{series}/identities/{new}")["members"][0]["unit"] == unit
    member = view["members"][0]["id"]
    client.act("move", series=series, members=[member], to=c)
    assert member in {m["id"] for m in client.get(f"/api/books/{series}/identities/{c}")["members"]}
    client.act("extra", series=series, identity=c, value=True)
    assert identities(client, series)[c]["not_character"]
    status, error = client.call("/api/actions", {"kind": "merge", "payload": {"series": series,
                                                                               "identities": [a, 999]}})
    assert status == 400 and "999" in error["error"]
    stored = client.get("/api/actions")["actions"]
    assert [x["kind"] for x in stored] == ["merge", "name", "move", "move", "extra"]  # nothing of the bad one
    client.call("/api/undo", {})
    assert not identities(client, series)[c]["not_character"]
    client.call("/api/undo", {"action": merged["id"]})
    assert b in identities(client, series)
    assert client.get("/api/books")["actions"] == 3


def test_queue_answers_are_stored_and_not_asked_again(app) -> None:
    client = Client(app.base, app.token)
    items = client.get("/api/queue?limit=50")["items"]
    assert items, "the random model's labels leave doubtful decisions"
    doubts = [q["doubt"] for q in items]
    assert doubts == sorted(doubts)
    for q in items[:4]:
        if q["type"] == "same":
            client.act("same", series=q["series"], a=q["a"], b=q["b"], answer="no")
        else:
            client.act("belongs", series=q["series"], unit=q["unit"], identity=q["identity"], answer="no",
                       other=q["other"])
    asked = {json.dumps({k: q.get(k) for k in ("type", "a", "b", "unit")}) for q in items[:4]}
    again = {json.dumps({k: q.get(k) for k in ("type", "a", "b", "unit")})
             for q in client.get("/api/queue?limit=50")["items"]}
    assert not asked & again


def test_more_like_this_is_sorted_and_excludes_the_query(app) -> None:
    client = Client(app.base, app.token)
    series = first_series(client)
    identity = next(iter(identities(client, series)))
    near = client.get(f"/api/similar?series={series}&identity={identity}&k=5")["members"]
    assert len(near) == 5 and all(m["identity"] != identity or m["series"] != series for m in near)
    assert [m["distance"] for m in near] == sorted(m["distance"] for m in near)
    member = client.get(f"/api/books/{series}/identities/{identity}")["members"][0]["id"]
    out = client.get(f"/api/similar?member={urllib.parse.quote(member)}&k=3")["members"]
    assert len(out) == 3 and member not in {m["id"] for m in out}


def test_two_clients_and_two_apps_writing_at_once_lose_nothing(app, review_labels, tmp_path) -> None:
    second = start_in_background(ReviewConfig(labels=str(review_labels["labels"]), crops=str(review_labels["crops"]),
                                              port=0, db=str(tmp_path / "review.db")))
    try:
        series = first_series(Client(app.base, app.token))
        identity = next(iter(identities(Client(app.base, app.token), series)))

        def write(base: str, token: str, who: str) -> None:
            client = Client(base, token)
            for i in range(10):
                client.act("name", targets=[[series, identity]], name=f"{who}{i}")

        threads = [threading.Thread(target=write, args=(app.base, app.token, "a")),
                   threading.Thread(target=write, args=(app.base, app.token, "b")),
                   threading.Thread(target=write, args=(second.base, second.token, "c"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stored = ReviewLog(str(tmp_path / "review.db")).actions()
        assert len(stored) == 30
        assert {a.payload["name"][0] for a in stored} == {"a", "b", "c"}
        for running in (app, second):  # both apps see every action, the last one's name wins
            client = Client(running.base, running.token)
            assert client.get("/api/books")["actions"] == 30
            assert identities(client, series)[identity]["name"] == stored[-1].payload["name"]
    finally:
        second.stop()


def test_an_action_another_process_stores_during_a_replay_is_applied_once(review_labels, tmp_path) -> None:
    """The interleaving that the concurrent test above can hit by chance, made certain: another app stores an
    action between this one's look and its write (so this one replays the log), and another while it replays:
    every action counts once in both."""
    from reid.stages.review.corpus import ReviewCorpus

    db = str(tmp_path / "review.db")
    mine, other = ReviewCorpus(str(review_labels["labels"]), db), ReviewCorpus(str(review_labels["labels"]), db)
    series, identity = sorted(mine.state.ids)[0]
    target = {"targets": [[series, identity]]}
    other.act("name", {**target, "name": "before"})
    append, read = mine.log.append, mine.log.actions
    pending = ["between", "during"]

    def append_after_another(*args, **kwargs):
        other.act("name", {**target, "name": pending.pop(0)})
        return append(*args, **kwargs)

    def read_after_another(*args, **kwargs):
        if not args and not kwargs and pending:  # the replay's read of the whole log
            other.act("name", {**target, "name": pending.pop(0)})
        return read(*args, **kwargs)

    mine.log.append, mine.log.actions = append_after_another, read_after_another
    try:
        mine.act("name", {**target, "name": "mine"})
    finally:
        mine.log.append, mine.log.actions = append, read
    assert not pending, "the replay did not happen"
    mine.sync()
    other.sync()
    assert [a.payload["name"] for a in ReviewLog(db).actions()] == ["before", "between", "mine", "during"]
    assert mine.state.applied == other.state.applied == 4
    assert mine.state.names == other.state.names


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*.parquet")))).hexdigest()


def test_exports_are_the_labels_plus_the_review(app, review_labels, tmp_path) -> None:
    client = Client(app.base, app.token)
    series = first_series(client)
    before = identities(client, series)
    a, b = sorted(before)[:2]
    digest = _digest(review_labels["labels"] / "data")
    client.act("merge", series=series, identities=[a, b])
    client.act("name", targets=[[series, a]], name="Hero, the \"first\"")
    table = effective_labels(str(review_labels["labels"]), str(tmp_path / "review.db"))
    assert table.num_rows == read_labels(str(review_labels["labels"])).num_rows
    hero = [r for r in table.to_pylist() if r["series_id"] == series and r["reviewed_identity"] == a]
    assert {r["series_identity"] for r in hero} == {a, b} and {r["name"] for r in hero} == {"Hero, the \"first\""}
    files = export_labels(str(review_labels["labels"]), str(tmp_path / "export"), str(tmp_path / "review.db"))
    assert [Path(f).name for f in files] == ["export.parquet", "export.csv"]
    assert pq.read_table(files[0]).equals(plain_boxes(table))
    import csv

    with open(files[1], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == table.num_rows and sum(r["name"] == "Hero, the \"first\"" for r in rows) == len(hero)
    out = export_sequences(str(review_labels["labels"]), str(tmp_path / "seq"), str(tmp_path / "review.db"))
    sequences = read_sequences(out["path"])
    assert out["sequences"] == len(sequences) > 0
    assert {c.char_id for s in sequences for c in s.characters} == {f"{series}_{a}"}
    # the merged character joins its windows: sequences whose panels come from two label windows, with its
    # instances in both (book-level positive pairs for fine-tuning)
    window_of = {r["panel_id"]: r["window_id"] for r in table.to_pylist()}
    joined = [s for s in sequences if len({window_of[str(p)] for p in s.panels}) > 1]
    assert out["book_sequences"] == len(joined) > 0
    for seq in joined:
        hero_windows = {window_of[inst.panel_id] for c in seq.characters for inst in c.instances}
        assert len(hero_windows) == 2 and len(set(seq.panels)) == 4
    plain = export_sequences(str(review_labels["labels"]), str(tmp_path / "seq0"), str(tmp_path / "review.db"),
                             across_windows=0)
    assert plain["book_sequences"] == 0 and plain["sequences"] == out["sequences"] - len(joined)
    assert _digest(review_labels["labels"] / "data") == digest  # the app never rewrites the labels


def test_thumbnails_read_each_crops_shard_once(app) -> None:
    client = Client(app.base, app.token)
    series = first_series(client)
    book = client.get(f"/api/books/{series}")
    thumbs = [i for row in book["identities"] for i in row["faces"] + row["bodies"]]
    for instance in thumbs + thumbs:
        status, data = client.call(f"/api/thumb/{instance}")
        assert status == 200 and data[:2] == b"\xff\xd8"  # JPEG
    shards = {app.corpus.instance_shard[i] for i in thumbs}
    assert app.crops.reads == len(shards)  # never a shard read per request
    assert client.call("/api/thumb/0_0_0_face_99")[0] == 404


def test_the_job_serves_with_a_token_also_on_every_interface(review_labels, tmp_path, job_env) -> None:
    process = subprocess.Popen([sys.executable, str(REPO / "jobs" / "review.py"), "--labels", str(review_labels["labels"]),
                                "--crops", str(review_labels["crops"]), "--host", "0.0.0.0", "--port", "0",
                                "--db", str(tmp_path / "r.db")], stdout=subprocess.PIPE, text=True, env=job_env)
    try:
        line = process.stdout.readline()
        assert line.startswith("review app: open http://127.0.0.1:") and "token=" in line, line
        url = line.split("open ", 1)[1].strip()
        base, token = url.split("/?token=")
        assert Client(base, None).call("/api/books")[0] == 401
        assert Client(base, token).call("/api/books")[0] == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    for flags, named in ([["--labels", str(tmp_path / "nowhere"), "--crops", str(review_labels["crops"])],
                          "nowhere"],
                         [["--labels", str(review_labels["labels"]), "--crops", str(tmp_path)], str(tmp_path)]):
        bad = subprocess.run([sys.executable, str(REPO / "jobs" / "review.py"), *flags], env=job_env,
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and named in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    help_text = subprocess.run([sys.executable, str(REPO / "jobs" / "review.py"), "export", "--help"], env=job_env,
                               capture_output=True, text=True, check=True).stdout
    assert "--out" in help_text and "--db" in help_text


def _other_model(folder: Path) -> Path:
    torch.manual_seed(1)
    path = folder / "other.pt"
    save_model_checkpoint(ReIDNet(ModelConfig(arch="slim_resnet10", face_size=32, body_size=48)), str(path))
    return path


def _two_units_of_two_windows(app, series: int) -> tuple[str, str]:
    """Two window identities of a book in different windows (so no panel in common: a merge the panel
    cannot-link allows), each from an identity that keeps other members after it leaves."""
    state = app.corpus.state
    units = sorted(u for u, ms in state.unit_members.items() if state.series_of[ms[0]] == series
                   and len(state.ids[state.identity_of_unit(u)]) > len(ms))
    first = units[0]
    return first, next(u for u in units if split_unit_id(u)[0] != split_unit_id(first)[0])


def test_the_next_label_run_keeps_merges_splits_names_and_ids(app, review_labels, tmp_path, mlflow_uri) -> None:
    client = Client(app.base, app.token)
    series = first_series(client)
    u1, u2 = _two_units_of_two_windows(app, series)
    sources = {app.corpus.state.identity_of_unit(u)[1] for u in (u1, u2)}
    client.act("move", series=series, units=[u1], to=None)
    x = app.corpus.state.identity_of_unit(u1)[1]
    client.act("move", series=series, units=[u2], to=None)
    y = app.corpus.state.identity_of_unit(u2)[1]
    client.act("merge", series=series, identities=[x, y])
    client.act("name", targets=[[series, x]], name="Hero")
    state = app.corpus.state
    hero_keys = {state.key_of[m] for m in state.ids[(series, x)]}
    left_keys = {s: {state.key_of[m] for m in state.ids[(series, s)]} for s in sources}
    db = str(tmp_path / "review.db")
    with pytest.raises(ConfigError, match="another folder"):
        run_label(label_config(review_labels["crops"], review_labels["labels"], review_labels["model"], THRESHOLDS,
                               mlflow_uri, corrections=db, report_windows=0, name="review-same-out"))
    cfg = label_config(review_labels["crops"], tmp_path / "relabelled", _other_model(tmp_path), THRESHOLDS,
                       mlflow_uri, corrections=db, report_windows=0, save_embeddings=True, name="review-relabel")
    metrics = run_label(cfg)["metrics"]
    rows = read_labels(cfg.out, ["series_id", "char_key", "series_identity"], include_unassigned=False).to_pylist()
    now: dict[str, set[int]] = {}
    for r in rows:
        now.setdefault(r["char_key"], set()).add(r["series_identity"])
    assert set().union(*(now[k] for k in hero_keys)) == {x}  # the merge: one identity, its id, another model
    for source, keys in left_keys.items():  # what the splits left behind stays apart, with its id
        assert set().union(*(now[k] for k in keys)) == {source}
    applied = read_applied_corrections(cfg.out)
    assert applied["names"] == [[series, x, "Hero"]] and applied["source"]["review_db"] == db
    assert metrics["corrections_groups_kept"] == metrics["corrections_groups"] == 1 + len(sources)
    assert metrics["corrections_splits_kept"] == metrics["corrections_splits"] >= 1
    relabelled = start_in_background(ReviewConfig(labels=cfg.out, crops=str(review_labels["crops"]), port=0))
    try:  # the name is there when the new labels are reviewed
        assert identities(Client(relabelled.base, relabelled.token), series)[x]["name"] == "Hero"
    finally:
        relabelled.stop()
    assert os.path.exists(os.path.join(cfg.out, "review.db"))  # its own log, beside its labels


def test_finetune_adds_the_reviewed_sequences_but_never_held_out_panels(review_labels, tiny_corpus, tmp_path
                                                                        ) -> None:
    from reid.stages.review.corpus import ReviewCorpus
    from reid.stages.train.finetune import FinetuneConfig, read_splits

    db = str(tmp_path / "review.db")
    corpus = ReviewCorpus(str(review_labels["labels"]), db)
    for series, identity in sorted(corpus.state.ids):  # a reviewer names every identity: all windows reviewed
        corpus.act("name", {"targets": [[series, identity]], "name": f"c{series}-{identity}"})
    out = export_sequences(str(review_labels["labels"]), str(tmp_path / "reviewed"), db)
    annotations = tmp_path / "comics_seq"  # the annotations without the train windows the review also covers
    shutil.copytree(tiny_corpus / "data" / "comics_seq", annotations)
    reviewed = {s.seq_id for s in read_sequences(out["path"])}
    train = json.loads((annotations / "train_sequences.json").read_text())
    (annotations / "train_sequences.json").write_text(json.dumps([e for e in train if e["seq_id"] not in reviewed]))
    base = FinetuneConfig(crops=str(review_labels["crops"]), sequences=str(annotations),
                          storage=str(tmp_path / "train"), name="plain")
    plain, _ = read_splits(base)
    more, _ = read_splits(FinetuneConfig(**{**base.__dict__, "extra_sequences": str(tmp_path / "reviewed"),
                                            "name": "more"}))
    annotated = {s.seq_id for split in plain.values() for s in split}
    held_out = {p for split in ("validation", "test") for s in plain[split] for p in s.panels}
    expected = [s for s in read_sequences(out["path"]) if s.seq_id not in annotated and not held_out & set(s.panels)]
    assert expected and out["sequences"] > len(expected)  # some windows are new, some annotated or held out
    assert [s.seq_id for s in more["train"]] == [s.seq_id for s in plain["train"]] + [s.seq_id for s in expected]
    assert more["validation"] == plain["validation"] and more["test"] == plain["test"]
