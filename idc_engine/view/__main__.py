"""Serves the slides idc-slide wrote in a local web page: deep zoom, the IDC overlay, thresholds.

    python -m idc_engine.view runs/demo/slides                 # http://127.0.0.1:<free port>/
    python -m idc_engine.view OUT --port=8765                  # a fixed port (an SSH tunnel's)
    ssh -L 8765:127.0.0.1:8765 gpu-host idc-view OUT --port=8765   # a remote machine's slides

Every OUT/<slide>/summary.json is listed (idc_engine/view/catalog.py) with its IDC fraction,
tissue, tiles, threshold, model and date; a slide whose file moved or no longer opens is listed
with its heatmap.png and a message. Opening a slide shows it at full resolution (OpenSlide's
Deep Zoom, OpenSeadragon) with the IDC probability of every tile over it: opacity, on/off and a
threshold that recolours in the browser; docs/viewer.md.

The server binds 127.0.0.1 only: the slides are served without a login, so another --host is
refused unless --allow_remote says so (an SSH tunnel, above, is the safe way to a remote
machine). A missing OUT_DIR, one without slide outputs, or a port in use is an `error:` line and
exit code 2. Every flag: --helpfull.
"""

import dataclasses
import errno
import sys

from absl import app

from idc_engine import cli
from idc_engine.view.catalog import ViewError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclasses.dataclass
class ViewConfig:
    port: int = cli.option(0, "The port to serve on; 0: a free one (printed).")
    host: str = cli.option("127.0.0.1", "The address to bind: localhost only unless "
                           "--allow_remote (the slides are served without a login).")
    allow_remote: bool = cli.option(False, "Allow a --host other than 127.0.0.1, localhost or "
                                    "::1: every machine that reaches it sees the slides. An SSH "
                                    "tunnel to a localhost viewer is the safe way.")
    cache_mb: int = cli.option(256, "Encoded Deep Zoom tiles kept in memory (LRU), in MB.")


def define_flags() -> None:
    cli.define_flags(ViewConfig)


def check_address(config: ViewConfig) -> None:
    """ViewError naming --host when it is not a local address and --allow_remote is not given,
    or --port when it is not a TCP port."""
    if config.host not in LOCAL_HOSTS and not config.allow_remote:
        raise ViewError(
            f"--host={config.host}: the viewer has no login, so it serves localhost only; from "
            "another machine, tunnel to it (there: ssh -L 8765:127.0.0.1:8765 THIS_HOST; here: "
            f"idc-view OUT --port=8765), or give --allow_remote to serve every machine that "
            f"can reach {config.host}")
    if config.port < 0 or config.port > 65535:
        raise ViewError(f"--port={config.port}: not a TCP port (0-65535; 0 picks a free one)")


def make_server(output_dir: str, config: ViewConfig):
    """The server bound to --host:--port over OUT's catalog; ViewError when it cannot be."""
    import socket

    from idc_engine.view import catalog, server

    check_address(config)
    slides = catalog.load_catalog(output_dir)
    server_class = server.ViewerServer
    if ":" in config.host:
        server_class = type("ViewerServer6", (server.ViewerServer,),
                            {"address_family": socket.AF_INET6})
    try:
        return server_class((config.host, config.port), slides, config.cache_mb << 20,
                            local_only=not config.allow_remote)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ViewError(f"--port={config.port}: {config.host}:{config.port} is in use by "
                            "another program; give another port, or --port=0 for a free one") \
                from e
        raise ViewError(f"--host={config.host} --port={config.port}: cannot serve there "
                        f"({e.strerror or e})") from e


def main(argv) -> int:
    if len(argv) != 2:
        raise app.UsageError("give one OUT_DIR: the --output_dir idc-slide wrote into")
    config = cli.config_from_flags(ViewConfig)
    httpd = make_server(argv[1], config)
    host, port = httpd.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    viewable = sum(e.viewable for e in httpd.catalog.values())
    print(f"serving {len(httpd.catalog)} slides of {argv[1]} ({viewable} viewable) at "
          f"http://{shown}:{port}/  (Ctrl-C stops)", flush=True)
    for entry in httpd.catalog.values():
        if entry.message:
            print(f"  {entry.name}: {entry.message}", file=sys.stderr)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


def run() -> None:
    """Console-script entry point (idc-view)."""
    cli.run(define_flags, main)


if __name__ == "__main__":
    run()
