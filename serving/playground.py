"""The playground: a page on the API's own port where a person chats with the champion, asks RAG questions and
searches the index (what llama.cpp's and TGI's servers ship as their chat page).

Three static files in serving/playground/ (HTML, CSS, plain JavaScript), no build step and no front-end
package: the page needs streaming fetch, a form and a list, which every browser has. It calls the same public
routes any client calls (/v1/status, /v1/chat/completions, /v1/rag, /v1/search), so it can do nothing a client
cannot. It is public (no API key to load it); when keys are on, the page asks for one and keeps it in memory.

Mounted at `/` beside the API (BentoML's PassiveMount matches only these routes, so /readyz, /metrics and the
rest stay BentoML's). `/` redirects here: BentoML's own index page there documents `@bentoml.api` routes, and this
service has none (its routes are FastAPI's, mounted), so the page it replaces showed nothing usable.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

FILES = Path(__file__).parent / "playground"
PAGE = "/playground"
ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}
HEADERS = {
    # Everything comes from this server: the page works offline and no model output can load a remote script.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'",
    # A redeployed server's new page is picked up on reload (the files are small).
    "Cache-Control": "no-cache",
}


async def _page(_: Request) -> Response:
    return FileResponse(FILES / "index.html", media_type="text/html", headers=HEADERS)


async def _asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        return PlainTextResponse(f"no such playground file: {name}", status_code=404)
    return FileResponse(FILES / name, media_type=ASSETS[name], headers=HEADERS)


async def _home(_: Request) -> Response:
    return RedirectResponse(PAGE, status_code=307)


def create_playground_app() -> Starlette:
    """The playground's routes: `/` (redirect), `/playground`, `/playground/<asset>`."""
    return Starlette(
        routes=[
            Route("/", _home, methods=["GET"]),
            Route(PAGE, _page, methods=["GET"]),
            Route(PAGE + "/{name}", _asset, methods=["GET"]),
        ]
    )
