"""The review web app (FastAPI): pages and JSON API over a :class:`~reid.stages.review.corpus.ReviewCorpus`.

Every request needs the session token: ``?token=`` (the printed URL; it also sets an HTTP-only cookie for the
page's own requests), the ``X-Review-Token`` header, or that cookie; anything else is 401, whatever the host it
listens on. Every asset is served from ``reid/stages/review/static/``: nothing is loaded from the internet.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel

from reid.core.corrections import ReviewActionError
from reid.stages.review import views
from reid.stages.review.corpus import ReviewCorpus
from reid.stages.review.media import CropCache, panel_bytes

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "review_token"
STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css"}


class ActionIn(BaseModel):
    kind: str
    payload: dict[str, Any]
    reviewer: str = ""


class UndoIn(BaseModel):
    action: int | None = None
    reviewer: str = ""


def new_token() -> str:
    return secrets.token_urlsafe(24)


def create_app(corpus: ReviewCorpus, crops: CropCache, comics_root: str, token: str,
               on_action: Callable[[dict[str, Any]], None] | None = None) -> FastAPI:
    """The app of one corpus; ``on_action`` is told of every stored action (the console status line)."""
    app = FastAPI(title="comic-reid review", docs_url=None, redoc_url=None, openapi_url=None)
    _guard(app, token)
    _page_routes(app)
    _read_routes(app, corpus)
    _write_routes(app, corpus, on_action)
    _image_routes(app, corpus, crops, comics_root)
    return app


def _guard(app: FastAPI, token: str) -> None:
    """Every request needs the review token (query, header or cookie); errors become JSON with a status."""

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        given = (request.query_params.get("token") or request.headers.get("x-review-token")
                 or request.cookies.get(COOKIE) or "")
        if not secrets.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"error": "a valid review token is required (use the URL the app printed)"},
                                status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(ReviewActionError)
    async def bad_action(_: Request, exc: ReviewActionError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(KeyError)
    async def not_found(_: Request, exc: KeyError):
        return JSONResponse({"error": str(exc.args[0]) if exc.args else "not found"}, status_code=404)


def _page_routes(app: FastAPI) -> None:
    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            return JSONResponse({"error": f"no asset {name!r}"}, status_code=404)
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])


def _read_routes(app: FastAPI, corpus: ReviewCorpus) -> None:
    @app.get("/api/books")
    def api_books() -> dict[str, Any]:
        return views.books(corpus)

    @app.get("/api/books/{series}")
    def api_book(series: int) -> dict[str, Any]:
        return views.book(corpus, series)

    @app.get("/api/books/{series}/identities/{identity}")
    def api_identity(series: int, identity: int) -> dict[str, Any]:
        return views.identity(corpus, series, identity)

    @app.get("/api/queue")
    def api_queue(limit: int = 20, series: int | None = None) -> dict[str, Any]:
        return {"items": views.queue(corpus, limit, series), "version": corpus.version}

    @app.get("/api/similar")
    def api_similar(member: str = "", series: int | None = None, identity: int | None = None,
                    k: int = 24) -> dict[str, Any]:
        return views.similar(corpus, member, series, identity, k)

    @app.get("/api/actions")
    def api_actions() -> dict[str, Any]:
        return {"actions": [a.to_dict() for a in corpus.log.actions()]}


def _write_routes(app: FastAPI, corpus: ReviewCorpus, on_action: Callable[[dict[str, Any]], None] | None) -> None:
    @app.post("/api/actions")
    def api_act(action: ActionIn) -> dict[str, Any]:
        stored = corpus.act(action.kind, action.payload, action.reviewer)
        if on_action:
            on_action(stored.to_dict())
        return {"action": stored.to_dict(), "version": corpus.version}

    @app.post("/api/undo")
    def api_undo(undo: UndoIn) -> dict[str, Any]:
        stored = corpus.undo(undo.action, undo.reviewer)
        if on_action:
            on_action(stored.to_dict())
        return {"action": stored.to_dict(), "version": corpus.version}


def _image_routes(app: FastAPI, corpus: ReviewCorpus, crops: CropCache, comics_root: str) -> None:
    @app.get("/api/thumb/{instance_id}")
    def api_thumb(instance_id: str) -> Response:
        return Response(crops.get(instance_id), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/panel/{panel_id}")
    def api_panel(panel_id: str) -> Response:
        try:
            data = panel_bytes(comics_root, panel_id)
        except (FileNotFoundError, OSError) as exc:
            return JSONResponse({"error": f"panel {panel_id}: {exc}"}, status_code=404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/box/{instance_id}")
    def api_box(instance_id: str) -> dict[str, Any]:
        panel, box = corpus.instance_box[instance_id]
        return {"instance_id": instance_id, "panel_id": panel, "box": box}
