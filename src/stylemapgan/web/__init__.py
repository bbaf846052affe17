"""The interactive web editor: an HTTP API (FastAPI) and one static page (plain HTML/JS/CSS).

``create_app(model, ...)`` builds the application; ``stylemapgan serve`` runs it with uvicorn.
FastAPI is imported only by :mod:`stylemapgan.web.app`, so importing this package is cheap.
"""

from __future__ import annotations

from stylemapgan.web.settings import WebSettings

__all__ = ["WebSettings"]
