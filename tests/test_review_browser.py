"""The review app in a real browser (Playwright driving Debian's Chromium; ``make test`` installs it): open with
the token, merge two identities, reload and see the merge, answer a queue item, undo; no token is a 401; two
browser contexts acting at once both persist."""

from __future__ import annotations

import pytest

from reid.core.contracts.review import ReviewLog, effective_actions
from reid.stages.review.config import ReviewConfig
from reid.stages.review.serve import start_in_background

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture()
def app(review_labels, tmp_path):
    running = start_in_background(ReviewConfig(labels=str(review_labels["labels"]),
                                               crops=str(review_labels["crops"]), port=0,
                                               db=str(tmp_path / "review.db")))
    yield running
    running.stop()


def counting(app) -> list:
    return effective_actions(ReviewLog(app.corpus.db_path).actions())


def test_merge_reload_answer_undo_in_the_browser(app, browser) -> None:
    from playwright.sync_api import expect

    context = browser.new_context()
    page = context.new_page()
    page.goto(app.url)
    expect(page.get_by_test_id("books")).to_be_visible()
    series = app.corpus.state.ids and min(s for s, _ in app.corpus.state.ids)
    page.get_by_test_id(f"book-{series}").get_by_role("link").click()
    rows = page.get_by_test_id("identity-row")
    expect(rows.first).to_be_visible()
    ids = [int(i) for i in rows.evaluate_all("rows => rows.map(r => r.dataset.identity)")]
    sizes = {i: int(page.get_by_test_id(f"size-{i}").inner_text()) for i in ids}
    a, b = sorted(ids)[:2]
    page.get_by_test_id(f"select-identity-{a}").check()
    page.get_by_test_id(f"select-identity-{b}").check()
    page.get_by_test_id("merge").click()
    expect(page.get_by_test_id(f"select-identity-{b}")).to_have_count(0)
    page.reload()
    expect(page.get_by_test_id(f"size-{a}")).to_have_text(str(sizes[a] + sizes[b]))
    expect(page.get_by_test_id(f"select-identity-{b}")).to_have_count(0)
    assert [x.kind for x in counting(app)] == ["merge"]

    page.get_by_test_id("nav-queue").click()
    question = page.get_by_test_id("question").first
    expect(question).to_be_visible()
    question.get_by_test_id("answer-no").click()
    expect(page.get_by_test_id("status")).to_contain_text("2 actions")
    assert [x.kind for x in counting(app)][-1] in ("same", "belongs")
    page.get_by_test_id("undo").click()
    expect(page.get_by_test_id("status")).to_contain_text("1 actions")
    assert [x.kind for x in counting(app)] == ["merge"]

    identity_link = page.get_by_test_id("nav-corpus")
    identity_link.click()
    page.get_by_test_id(f"book-{series}").get_by_role("link").click()
    page.get_by_test_id(f"open-identity-{a}").click()
    expect(page.get_by_test_id("member").first).to_be_visible()
    page.locator("img.thumb").first.click()  # the panel with the box (no corpus given: the caption says so)
    expect(page.get_by_test_id("panel")).to_be_visible()
    context.close()


def test_without_the_token_the_browser_gets_401(app, browser) -> None:
    context = browser.new_context()
    page = context.new_page()
    response = page.goto(app.base + "/")
    assert response is not None and response.status == 401
    assert page.goto(app.base + "/api/books").status == 401
    assert page.goto(app.url).status == 200  # the printed URL opens it
    context.close()


def test_two_browser_contexts_acting_at_once_both_persist(app, browser) -> None:
    from playwright.sync_api import expect

    pages = []
    for _ in range(2):
        page = browser.new_context().new_page()
        page.goto(app.url)
        page.get_by_test_id("books").wait_for()
        pages.append(page)
    series, identity = min(app.corpus.state.ids)
    script = """([series, identity, who]) => { window.done = Promise.all([...Array(10).keys()].map(i =>
        fetch("/api/actions", {method: "POST", headers: {"Content-Type": "application/json"},
          body: JSON.stringify({kind: "name", payload: {targets: [[series, identity]], name: who + i}})})
        .then(r => r.status))); }"""
    for who, page in zip("ab", pages, strict=True):  # both start before either finishes
        page.evaluate(script, [series, identity, who])
    statuses = [page.evaluate("() => window.done") for page in pages]
    assert statuses == [[200] * 10, [200] * 10]
    names = sorted(a.payload["name"] for a in ReviewLog(app.corpus.db_path).actions())
    assert names == sorted([f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)])
    for page in pages:
        page.reload()
        expect(page.get_by_test_id("status")).to_contain_text("20 actions")
        page.context.close()


def test_more_like_this_names_identities_of_several_books(app, browser) -> None:
    from playwright.sync_api import expect

    context = browser.new_context()
    page = context.new_page()
    page.goto(app.url)
    page.get_by_test_id("books").wait_for()
    series, identity = min(app.corpus.state.ids)
    page.goto(f"{app.base}/#/similar/{series}/{identity}")
    boxes = page.locator("input[data-target]")
    expect(boxes.first).to_be_visible()
    targets = sorted(set(boxes.evaluate_all("bs => bs.map(b => b.dataset.target)")))
    books = {t.split("/")[0] for t in targets}
    assert len(books) == 2, targets  # the nearest instances come from both books of the tiny corpus
    chosen = [next(t for t in targets if t.startswith(b + "/")) for b in sorted(books)]
    for target in chosen:
        page.locator(f'input[data-target="{target}"]').first.check()
    page.get_by_test_id("name-input").fill("Twin")
    page.get_by_test_id("set-name").click()
    expect(page.get_by_test_id("status")).to_contain_text("1 actions")
    named = {(s, i) for (s, i), name in app.corpus.state.names.items() if name == "Twin"}
    assert named == {tuple(int(x) for x in t.split("/")) for t in chosen}
    context.close()
