"""The viewer's HTTP server: the page, its static files, the catalog and each slide's files.

    GET /                                          the page (static/index.html)
    GET /static/<file>                             the page's scripts, styles, OpenSeadragon
    GET /api/slides                                the catalog (catalog.describe per slide)
    GET /slides/<name>/<version>/slide.dzi         Deep Zoom XML
    GET /slides/<name>/<version>/slide_files/<level>/<col>_<row>.jpeg    a Deep Zoom tile
    GET /slides/<name>/<version>/overlay.json      the overlay's data (overlay.py)
    GET /slides/<name>/<version>/heatmap.png       the run's heatmap.png

Anything else is 404, any method but GET 405; a request naming another host than this machine
(its Host header: a web page that rebinds its own name to 127.0.0.1 to read the slides) 403,
unless --allow_remote. Paths are matched against these patterns and
<name> looked up in the catalog: no file path is built from a URL, so a traversal attempt
(`..`, encoded or not) matches nothing. Static files are read into memory at start-up from the
package's static/ folder. The slides' URLs carry their version, so they are cached for a year
(immutable); the page and the catalog are not cached. Every response carries a
content-security policy allowing requests to this server only ('self'), and no referrer.

Fast on 2 cores: a thread per connection (ThreadingHTTPServer), HTTP/1.1 keep-alive (a
browser reuses its 6 connections), Nagle's algorithm off (a tile's last segment is not held
back waiting for an ACK), the encoded tiles in an LRU (deepzoom.py).
"""

import base64
import hashlib
import http.server
import importlib.resources
import json
import mimetypes
import os
import re
import threading
import urllib.parse

from idc_engine.slides import outputs
from idc_engine.view import catalog as catalog_lib
from idc_engine.view import overlay
from idc_engine.view.deepzoom import DeepZoom, UnreadableTile

CSP = ("default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'{style}; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
OPENSEADRAGON = "/static/vendor/openseadragon/openseadragon.min.js"
IMMUTABLE = "public, max-age=31536000, immutable"
SLIDE_FILE = re.compile(r"/slides/(?P<name>[^/]+)/(?P<version>[0-9a-f]{12})/(?P<file>"
                        r"slide\.dzi|overlay\.json|heatmap\.png|"
                        r"slide_files/(?P<level>\d{1,3})/(?P<col>\d{1,7})_(?P<row>\d{1,7})\.jpeg)")
LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")
METHODS = ("POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT")


def content_security_policy(openseadragon: bytes) -> str:
    """CSP: every request to this server only. OpenSeadragon adds one <style> element of its
    own (a focus outline for touch screens): it is allowed by its hash, taken from the vendored
    script, and no other inline style is."""
    found = re.search(rb'data-openseadragon-mobile-css","true"\);\w+\.textContent="([^"]*)"',
                      openseadragon)
    style = ""
    if found:
        digest = base64.b64encode(hashlib.sha256(found[1]).digest()).decode()
        style = f" 'sha256-{digest}'"
    return CSP.format(style=style)


def static_files() -> dict[str, tuple[bytes, str]]:
    """{URL path: (bytes, content type)} of every file under the package's static/ folder."""
    files = {}
    root = importlib.resources.files("idc_engine.view") / "static"

    def walk(folder, prefix: str) -> None:
        for item in folder.iterdir():
            if item.is_dir():
                walk(item, f"{prefix}{item.name}/")
            elif not item.name.startswith("."):
                kind = mimetypes.guess_type(item.name)[0] or "application/octet-stream"
                if kind.startswith("text/") or kind.endswith(("javascript", "json")):
                    kind += "; charset=utf-8"
                files[f"/static/{prefix}{item.name}"] = (item.read_bytes(), kind)

    walk(root, "")
    files["/"] = files["/static/index.html"]
    return files


class ViewerServer(http.server.ThreadingHTTPServer):
    daemon_threads = True          # a browser's idle keep-alive connections never block exit
    request_queue_size = 64

    def __init__(self, address, catalog: dict, cache_bytes: int, local_only: bool = True):
        self.catalog = catalog
        self.local_only = local_only
        self.deepzoom = DeepZoom(catalog, cache_bytes)
        self.static = static_files()
        self.csp = content_security_policy(self.static[OPENSEADRAGON][0])
        self._overlays: dict[str, bytes] = {}
        self._overlays_lock = threading.Lock()
        super().__init__(address, Handler)

    def overlay(self, entry) -> bytes:
        """The slide's overlay.json, built once (tiles.csv read on the first request)."""
        with self._overlays_lock:
            if entry.name not in self._overlays:
                self._overlays[entry.name] = overlay.overlay_json(entry)
            return self._overlays[entry.name]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "idc-view"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        """Quiet: a page load is hundreds of tile requests."""

    def send_body(self, status: int, body: bytes, kind: str, cache: str = "no-store",
                  extra: dict | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": kind, "Content-Length": str(len(body)),
                   "Cache-Control": cache, "Content-Security-Policy": self.server.csp,
                   "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                   "Cross-Origin-Resource-Policy": "same-origin", **(extra or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def not_found(self) -> None:
        self.send_body(404, b"not found\n", "text/plain; charset=utf-8")

    def method_not_allowed(self) -> None:
        """405, and the connection closed: a body the request may carry is never read."""
        self.close_connection = True
        self.send_body(405, b"GET only\n", "text/plain; charset=utf-8",
                       extra={"Allow": "GET", "Connection": "close"})

    def names_this_machine(self) -> bool:
        """Whether the Host header is a local name (any port: an SSH tunnel's may differ)."""
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return not self.server.local_only or name in LOCAL_NAMES

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        if not self.names_this_machine():
            self.send_body(403, b"this viewer answers requests for 127.0.0.1 only\n",
                           "text/plain; charset=utf-8")
            return
        path = urllib.parse.urlsplit(self.path).path
        static = self.server.static.get(path)
        if static is not None:
            self.send_body(200, *static)
        elif path == "/api/slides":
            body = json.dumps([catalog_lib.describe(e) for e in self.server.catalog.values()])
            self.send_body(200, body.encode(), "application/json; charset=utf-8")
        else:
            found = SLIDE_FILE.fullmatch(path)
            if found is None or not self.slide_file(found):
                self.not_found()

    def slide_file(self, found: re.Match) -> bool:
        """Sends the slide file the URL names; False where there is none (404)."""
        entry = self.server.catalog.get(urllib.parse.unquote(found["name"]))
        if entry is None or entry.version != found["version"]:
            return False
        file = found["file"]
        if file == "heatmap.png":
            try:
                with open(os.path.join(entry.folder, outputs.HEATMAP_PNG), "rb") as f:
                    body = f.read()
            except OSError:
                return False
            self.send_body(200, body, "image/png", IMMUTABLE)
            return True
        if not entry.viewable:
            return False
        if file == "slide.dzi":
            self.send_body(200, self.server.deepzoom.dzi(entry.name),
                           "application/xml; charset=utf-8", IMMUTABLE)
        elif file == "overlay.json":
            try:
                body = self.server.overlay(entry)
            except catalog_lib.ViewError as e:
                self.send_body(500, f"{e}\n".encode(), "text/plain; charset=utf-8")
                return True
            self.send_body(200, body, "application/json; charset=utf-8", IMMUTABLE)
        else:
            try:
                tile = self.server.deepzoom.tile(entry.name, int(found["level"]),
                                                 int(found["col"]), int(found["row"]))
            except UnreadableTile as e:
                self.send_body(500, f"{e}\n".encode(), "text/plain; charset=utf-8")
                return True
            if tile is None:
                return False
            self.send_body(200, tile, "image/jpeg", IMMUTABLE)
        return True


for _method in METHODS:
    setattr(Handler, f"do_{_method}", Handler.method_not_allowed)
