"""``stylemapgan serve``: the interactive web editor."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from stylemapgan.commands._common import (
    add_device,
    add_fast,
    add_parser,
    int_in,
    model_file,
    positive_int,
)

PathDefault = str | os.PathLike[str] | Callable[[], str | os.PathLike[str]] | None

# Defaults for --model and --gallery. None means: --model is required and the gallery is off
# (upload only). Each may be a path or a function returning one, called only when the command
# runs (no import-time work), so shipping a default is one line, e.g.
#   DEFAULT_GALLERY = lambda: avatars.gallery_dir() / "test"
def _default_model() -> str:
    from stylemapgan.formats.checkpoint import default_model_path

    return str(default_model_path())


def _default_gallery() -> str:
    from stylemapgan.data.avatars import gallery_dir

    return str(gallery_dir() / "test")


DEFAULT_MODEL: PathDefault = _default_model
DEFAULT_GALLERY: PathDefault = _default_gallery

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "serve", help="run the interactive web editor in your browser",
        description="""
            Serve the web editor: upload images (or pick them from --gallery), choose an original
            and up to four references, paint the region on a reference with a brush, eraser or
            box, drag it to another place on the original (unaligned transplantation), blend in
            W or W+, step through interpolations, undo/redo, and download the result (PNG) and
            the edit record (JSON).

            Each image is projected once and its stylemaps cached in memory, so an edit costs one
            generator pass; while one edit computes, newer edits from the same browser tab
            replace the pending one. Uploads are limited in bytes and pixels and kept in memory
            only. The server listens on 127.0.0.1 (this computer only) unless --host says
            otherwise; it has no authentication, so bind other addresses only on a trusted
            network.""",
        examples="""
            stylemapgan serve
            stylemapgan serve --model celeba_hq.safetensors
            stylemapgan serve --model celeba_hq.safetensors --gallery photos/ --port 8080
            stylemapgan serve --model m.safetensors --device cpu --max-upload-mb 10""",
    )
    p.add_argument("--model", required=DEFAULT_MODEL is None, type=model_file,
                   help="model file (.safetensors)" + ("" if DEFAULT_MODEL is None
                                                       else " (default: the packaged model)"))
    p.add_argument("--gallery", metavar="DIR",
                   help="folder of images offered in the page (default: "
                   + ("none, upload only)" if DEFAULT_GALLERY is None else "the packaged gallery)"))
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this computer only)")
    p.add_argument("--port", type=port_number, default=8000, help="port (default: 8000)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME[:PORT]",
                   help="another host name the page may be opened by (repeatable; e.g. this "
                        "machine's name with --host 0.0.0.0). Requests for any other name are "
                        "refused (DNS rebinding); the loopback names and --host always work")
    add_device(p)
    add_fast(p)
    p.add_argument("--align", dest="align", action="store_true", default=None,
                   help="detect and align faces in uploaded photos (the FFHQ recipe; needs the "
                        "faces extra). Default: on for face models (CelebA-HQ, FFHQ), off otherwise")
    p.add_argument("--no-align", dest="align", action="store_false",
                   help="never align: the user draws the square on every photo")
    p.add_argument("--max-upload-mb", type=positive_int, default=20,
                   help="largest accepted upload in MiB (default: 20)")
    p.add_argument("--max-megapixels", type=positive_int, default=40,
                   help="largest accepted image in megapixels, checked before decoding (default: 40)")
    p.add_argument("--cache-mb", type=positive_int, default=512,
                   help="memory for cached projections in MiB (default: 512)")
    p.set_defaults(func=run)


port_number = int_in(1, 65535)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host.strip().lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_default(value: PathDefault) -> str | None:
    if value is None:
        return None
    return os.fspath(value() if callable(value) else value)


def run(args: argparse.Namespace) -> int:
    import sys

    try:
        import uvicorn

        from stylemapgan.web.app import create_app_from_file
    except ImportError as exc:  # pragma: no cover - dependencies of the package
        from stylemapgan.errors import ConfigError

        raise ConfigError(f"the web editor needs fastapi, uvicorn and python-multipart ({exc}); "
                          "reinstall stylemapgan") from None
    from stylemapgan.web.settings import MiB, WebSettings

    settings = WebSettings(max_upload_bytes=args.max_upload_mb * MiB,
                           max_pixels=args.max_megapixels * 1_000_000,
                           projection_cache_bytes=args.cache_mb * MiB)
    model = args.model or resolve_default(DEFAULT_MODEL)
    gallery_dir = args.gallery or resolve_default(DEFAULT_GALLERY)
    from stylemapgan.web.app import serve_hosts

    app = create_app_from_file(model, gallery=gallery_dir, device=args.device, settings=settings,
                              fast=args.fast, align=args.align,
                              allowed_hosts=serve_hosts(args.host, args.port, args.allowed_host))
    engine = app.state.engine
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this address can use the "
              "editor and its model (there is no authentication); use --host 127.0.0.1 to keep "
              "it on this computer (the page answers only to this address, the loopback names "
              "and --allowed-host names)", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    gallery = app.state.gallery
    where = f", gallery: {len(gallery)} image(s)" if gallery.root is not None else ""
    print(f"stylemapgan editor: model {engine.model_name} ({engine.size}px) on {engine.device}"
          f"{where}")
    print(f"open http://{shown}:{args.port}/ in your browser (Ctrl+C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
