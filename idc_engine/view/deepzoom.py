"""The slide's Deep Zoom pyramid (OpenSlide's DeepZoomGenerator) as JPEG tiles, with an LRU of
the encoded tiles.

DeepZoomGenerator reads from the slide's levels only: the label and macro images (associated
images, which carry patient identifiers) are never read. limit_bounds=False keeps the Deep Zoom
image's pixel (x, y) at level 0 the slide's level-0 pixel (x, y), the coordinates of tiles.csv,
so the overlay needs no offset. One OpenSlide handle serves every thread: OpenSlide is
thread-safe, and openslide-python (ctypes) and Pillow's resize and JPEG encoder release the GIL.

OpenSlide's handle is unusable after any read error (every later call fails), so a tile that
cannot be decoded raises UnreadableTile (the server answers 500) and the slide is reopened for
the tiles after it; the old handle is left to the threads that may still hold it.

A tile of a level coarser than the slide's coarsest pyramid level is read from a larger region
and shrunk: 70-160 ms each on 2 cores, and those are the first tiles every page load asks for.
Encoded tiles are kept in an LRU bounded in bytes (--cache_mb), keyed by slide, version, level
and address, so a tile is encoded once while it stays in the cache.
"""

import collections
import io
import threading

from idc_engine.view.catalog import CatalogSlide, ViewError

TILE_SIZE = 254       # Deep Zoom's usual 254 + 2 x 1 overlap = 256-pixel tiles
OVERLAP = 1
JPEG_QUALITY = 75


class UnreadableTile(ViewError):
    """A tile OpenSlide could not decode (a corrupt region of the slide file)."""


class TileCache:
    """A thread-safe LRU of bytes, bounded by their total size."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes += len(value) - (len(old) if old is not None else 0)
            self._items[key] = value
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)


class DeepZoom:
    """Deep Zoom of every viewable catalog slide: dzi(name), tile(name, level, col, row)."""

    def __init__(self, catalog: dict[str, CatalogSlide], cache_bytes: int):
        self.catalog = catalog
        self.cache = TileCache(cache_bytes)
        self._reopening = threading.Lock()
        self.generators = {name: self._generator(entry.slide)
                           for name, entry in catalog.items() if entry.viewable}

    @staticmethod
    def _generator(slide):
        from openslide import deepzoom

        return deepzoom.DeepZoomGenerator(slide, TILE_SIZE, OVERLAP, limit_bounds=False)

    def _reopen(self, name: str, failed) -> None:
        """A new handle and generator for the slide, unless another thread made them already."""
        import openslide

        with self._reopening:
            if self.generators[name] is failed:
                self.generators[name] = self._generator(
                    openslide.OpenSlide(self.catalog[name].summary["slide"]))

    def dzi(self, name: str) -> bytes:
        return self.generators[name].get_dzi("jpeg").encode()

    def tile(self, name: str, level: int, col: int, row: int) -> bytes | None:
        """The JPEG of the tile, or None where the level or address is outside the pyramid;
        UnreadableTile where OpenSlide cannot decode it."""
        import openslide

        generator = self.generators[name]
        if not (0 <= level < generator.level_count):
            return None
        columns, rows = generator.level_tiles[level]
        if not (0 <= col < columns and 0 <= row < rows):
            return None
        key = (name, self.catalog[name].version, level, col, row)
        encoded = self.cache.get(key)
        if encoded is None:
            try:
                image = generator.get_tile(level, (col, row))
            except openslide.OpenSlideError as e:
                self._reopen(name, generator)
                raise UnreadableTile(f"{name}: OpenSlide cannot decode the tile {level}/{col}_"
                                     f"{row} ({e})") from e
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=JPEG_QUALITY)
            encoded = buffer.getvalue()
            self.cache.put(key, encoded)
        return encoded
