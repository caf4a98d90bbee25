"""A synthetic stand-in for the breast-cancer IDC patch dataset, in the real Kaggle layout.

The real dataset (Janowczyk & Madabhushi, Kaggle "Breast Histopathology Images") cannot be
downloaded here, so the demo and the tests use this generator instead. It writes

    <root>/<pid>/<0|1>/<pid>_idx5_x<X>_y<Y>_class<C>.png

with 50x50 RGB 8-bit PNG patches, folder 0 = non-IDC and 1 = IDC, and X, Y = 1 + 50 * column/row,
the patch's top-left corner on its slide, exactly like the real files.

Why the images look the way they do: a converter and a model must be exercised on data that has
a learnable but imperfect class signal, realistic colour statistics and real-world mess.

* Each patient's whole slide is rendered as one canvas and then cut into patches, so neighbouring
  patches are continuous like real tissue. Colours follow the Beer-Lambert model of H&E staining:
  eosin (pink stroma, with fibre texture and white fat/lumen gaps) plus hematoxylin (purple nuclei
  stamped as small soft ellipses, a few pixels wide as at the real 2.5x magnification).
* One to three tumour regions per slide hold crowded, larger, darker nuclei on a purple
  background (IDC). A patch is labelled 1 when its centre lies in a tumour region. The density
  fades over about a patch width at the region border, tumour cellularity varies (solid nests,
  sparse infiltrating parts), dense lymphocyte aggregates mimic tumour in benign tissue and 3% of
  labels are flipped, so no classifier reaches 100% (a linear model on 8x8 thumbnails gets ~0.9).
* Stains vary per patient (hue and strength of both stains, brightness) as they do between labs,
  and so do the number of patches and the positive fraction (about 28% overall, like the real
  28.4%, from almost none to most of a slide).

With `quirks=True` the tree also gets the mess of the real download, each item reported in the
returned summary so a converter can be checked against it: a byte-identical duplicate tree under
`IDC_regular_ps50_idx5/`, undersized edge patches, truncated (undecodable) PNGs, litter
(.DS_Store, Thumbs.db, AppleDouble `._*.png`, `__MACOSX/`), one patch whose folder disagrees
with its name and one `.png` whose name does not parse.

Everything is deterministic per seed: the same arguments give byte-identical files (the target
directory must be new or empty). Numpy and PIL only (no TensorFlow), so the module stays light to
import. Its command line is idc_engine/synthetic.py:

    python -m idc_engine.synthetic --output_dir=/tmp/idc --num_patients=20 --seed=0 --quirks
"""

import io
import math
import os
import re

import numpy as np
from PIL import Image

from idc_engine.data import records

DUPLICATE_DIR = "IDC_regular_ps50_idx5"

# Optical-density vectors (RGB) of hematoxylin (Ruifrok & Johnston) and eosin (bluer than theirs,
# for the pinker stroma of the real patches).
_HEMATOXYLIN = np.array([0.650, 0.704, 0.286])
_EOSIN = np.array([0.10, 0.90, 0.40])

_TISSUE_FILL = 0.72           # fraction of the slide's bounding grid covered by tissue
_BORDER_SOFTNESS_PX = 16.0    # tumour density fades over about this many pixels
_LABEL_NOISE = 0.03           # annotators' mistakes: fraction of flipped labels
_NUCLEUS_RADIUS = 4           # stamp window half-size; nuclei are at most ~3 px across

# Independent random streams, so e.g. turning quirks on does not change any clean patch.
_IDS_STREAM, _PATIENT_STREAM, _QUIRK_STREAM = 0, 1, 2


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def patch_name(pid: str, col: int, row: int, label: int) -> str:
    return f"{pid}_idx5_x{1 + records.PATCH_SIZE * col}_y{1 + records.PATCH_SIZE * row}_class{label}.png"


# ----------------------------------------------------------------------------- slide geometry

def _draw_patient_ids(rng: np.random.Generator, n: int) -> list[str]:
    # Real ids are 4-5 digit numbers around 8863..16896.
    return [str(i) for i in rng.choice(np.arange(8000, 17000), size=n, replace=False)]


def _tissue_cells(rng: np.random.Generator, n: int) -> tuple[int, int, np.ndarray]:
    """A blob-shaped tissue of exactly n patch cells: (rows, cols, [(row, col)] row-major)."""
    aspect = rng.uniform(0.6, 1.7)
    cols = max(1, math.ceil(math.sqrt(n / _TISSUE_FILL * aspect)))
    rows = max(1, math.ceil(n / _TISSUE_FILL / cols))
    r, c = np.mgrid[0:rows, 0:cols]
    # Elliptic distance from the centre, wobbled by low-frequency waves: an irregular outline.
    dist = np.hypot((r + 0.5 - rows / 2) / rows, (c + 0.5 - cols / 2) / cols)
    angle = np.arctan2(r + 0.5 - rows / 2, c + 0.5 - cols / 2)
    for k in (2, 3, 5):
        dist *= 1 + 0.12 * np.sin(k * angle + rng.uniform(0, 2 * np.pi))
    order = np.argsort(dist.ravel(), kind="stable")[:n]
    order.sort()
    return rows, cols, np.stack([order // cols, order % cols], axis=1)


class _RegionField:
    """Smooth 'how deep inside a region' field in pixels: > 0 inside, < 0 outside.

    A union of rotated ellipses whose border is wobbled by a few long waves; evaluated
    analytically so nucleus positions and patch centres see the same regions. `level` moves the
    border (the tumour's is set to give the patient's positive fraction).
    """

    def __init__(self, rng, centres, radius_range, wobble_px):
        k = len(centres)
        self.centres = np.asarray(centres, dtype=np.float64)
        self.a = rng.uniform(*radius_range, size=k)
        self.b = self.a * rng.uniform(0.5, 1.0, size=k)
        self.theta = rng.uniform(0, np.pi, size=k)
        waves = 4
        self.freq = rng.uniform(1 / 400, 1 / 120, size=waves)
        self.dirs = rng.uniform(0, 2 * np.pi, size=waves)
        self.phase = rng.uniform(0, 2 * np.pi, size=waves)
        self.wobble = wobble_px / math.sqrt(waves / 2)
        self.level = 0.0

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        depth = np.full(np.shape(x), -np.inf)
        for (cx, cy), a, b, t in zip(self.centres, self.a, self.b, self.theta):
            u = (x - cx) * np.cos(t) + (y - cy) * np.sin(t)
            v = -(x - cx) * np.sin(t) + (y - cy) * np.cos(t)
            depth = np.maximum(depth, (1 - np.sqrt((u / a) ** 2 + (v / b) ** 2)) * np.sqrt(a * b))
        for f, d, p in zip(self.freq, self.dirs, self.phase):
            depth += self.wobble * np.sin(2 * np.pi * f * (x * np.cos(d) + y * np.sin(d)) + p)
        return depth - self.level


def _random_regions(rng, cx, cy, max_count, radius_range, wobble_px) -> _RegionField:
    """1..max_count regions centred on random patch centres (cx, cy)."""
    k = min(len(cx), int(rng.integers(1, max_count + 1)))
    pick = rng.choice(len(cx), size=k, replace=False)
    return _RegionField(rng, np.stack([cx[pick], cy[pick]], 1), radius_range, wobble_px)


def _sigmoid(z):
    return 1 / (1 + np.exp(-np.clip(z, -30, 30)))


# ----------------------------------------------------------------------------- rendering

def _smooth_noise(rng, height, width, scale_y, scale_x) -> np.ndarray:
    """Unit-variance noise with features about scale pixels wide (bicubic-upsampled grid)."""
    gh, gw = height // scale_y + 3, width // scale_x + 3
    grid = Image.fromarray(rng.standard_normal((gh, gw)).astype(np.float32))
    big = np.asarray(grid.resize((gw * scale_x, gh * scale_y), Image.Resampling.BICUBIC))
    big = big[scale_y:scale_y + height, scale_x:scale_x + width]
    return big / max(float(big.std()), 1e-6)


def _stain_style(rng) -> dict:
    """Per-patient stain: perturbed stain vectors, stain strengths, illumination."""
    def jitter(vector, amount):
        v = np.clip(vector + rng.normal(0, amount, 3), 0.02, None)
        return v / np.linalg.norm(v)
    return {
        "hematoxylin": jitter(_HEMATOXYLIN, 0.06),
        "eosin": jitter(_EOSIN, 0.08),
        "h_strength": rng.uniform(0.65, 1.35),
        "e_strength": rng.uniform(0.65, 1.35),
        "light": rng.uniform(232, 252) + rng.normal(0, 3, 3),
    }


# Another lab's staining, for `restained_patients`: hematoxylin browner (absorbing less red,
# more blue) and stronger, eosin paler and redder, a dimmer lamp. Applied on top of the patient's
# own drawn style (no extra random draw), so the tissue is the same and only its colours move.
_OTHER_LAB = {"hematoxylin": np.array([-0.25, 0.0, 0.35]), "eosin": np.array([0.20, -0.15, 0.15]),
              "h_strength": 1.35, "e_strength": 0.6, "light": 0.93}


def _restained(style: dict) -> dict:
    """`style` as the other lab (above) would have stained the same slide."""
    unit = lambda v: np.clip(v, 0.02, None) / np.linalg.norm(np.clip(v, 0.02, None))
    return {"hematoxylin": unit(style["hematoxylin"] + _OTHER_LAB["hematoxylin"]),
            "eosin": unit(style["eosin"] + _OTHER_LAB["eosin"]),
            "h_strength": style["h_strength"] * _OTHER_LAB["h_strength"],
            "e_strength": style["e_strength"] * _OTHER_LAB["e_strength"],
            "light": style["light"] * _OTHER_LAB["light"]}


def _stamp_nuclei(hmap, x, y, a, b, theta, darkness, vesicular, rng) -> None:
    """Draws soft elliptic nuclei into the hematoxylin map (padded by _NUCLEUS_RADIUS), all at once."""
    if len(x) == 0:
        return
    r = _NUCLEUS_RADIUS
    f32 = lambda v: np.asarray(v, np.float32)[:, None, None]
    off = np.arange(-r, r + 1, dtype=np.float32) + np.float32(0.5)
    ix, iy = np.floor(x), np.floor(y)
    dx = off[None, None, :] - f32(x - ix)
    dy = off[None, :, None] - f32(y - iy)
    cos, sin, a, b = f32(np.cos(theta)), f32(np.sin(theta)), f32(a), f32(b)
    rho = np.sqrt(((dx * cos + dy * sin) / a) ** 2 + ((dy * cos - dx * sin) / b) ** 2)
    coverage = np.clip((1 - rho) * np.minimum(a, b) + np.float32(0.5), 0, 1)   # ~1 px anti-aliased edge
    # Vesicular (tumour) nuclei: paler chromatin inside a dark membrane.
    profile = 1 - f32(vesicular * 0.4) * np.clip(1 - rho * rho, 0, 1)
    grain = rng.uniform(0.8, 1.15, size=coverage.shape).astype(np.float32)
    value = f32(darkness) * coverage * profile * grain
    corner = (iy.astype(np.intp) * hmap.shape[1] + ix.astype(np.intp))[:, None, None]
    window = (np.arange(2 * r + 1)[:, None] * hmap.shape[1] + np.arange(2 * r + 1)[None, :])[None]
    keep = value > 0.01
    np.maximum.at(hmap.reshape(-1), (corner + window)[keep], value[keep])


def _nuclei(rng, n, shape_args):
    """Random nucleus shapes: (a, b, theta, darkness, vesicular) for n nuclei."""
    radius, elongation, dark, vesicular, theta = shape_args
    a = rng.uniform(*radius, size=n)
    b = a * rng.uniform(*elongation, size=n)
    return a, b, theta(n), rng.uniform(*dark, size=n), np.full(n, vesicular)


def _render_slide(rng, rows, cols, tumour, mimic, style) -> np.ndarray:
    """The whole slide as an (rows*50, cols*50, 3) uint8 H&E-like image."""
    height, width = rows * records.PATCH_SIZE, cols * records.PATCH_SIZE
    # Region maps on a 5-px grid (smooth anyway), upsampled for the per-pixel stains.
    step = 5
    gy, gx = np.mgrid[0:height // step, 0:width // step] * step + step / 2
    t_coarse = _sigmoid(tumour(gx, gy) / _BORDER_SOFTNESS_PX).astype(np.float32)   # soft border
    m_coarse = _sigmoid(mimic(gx, gy) / 4.0).astype(np.float32)
    # Tumour cellularity varies: solid nests next to sparse, infiltrating parts.
    cellularity = _sigmoid(_smooth_noise(rng, *t_coarse.shape, 8, 8) * 1.5 + 0.6)
    c_coarse = (t_coarse * (0.2 + 0.8 * cellularity)).astype(np.float32)
    upsample = lambda m: np.asarray(Image.fromarray(m).resize((width, height), Image.Resampling.BILINEAR))
    t_map, c_map = upsample(t_coarse), upsample(c_coarse)

    # Stroma: eosin with fibres along a per-patient direction. Fat lobules are white with a web of
    # thin membranes (zero crossings of fine noise); elsewhere only small lumen gaps.
    fibres = _smooth_noise(rng, height, width, 3, 12) if rng.random() < 0.5 else \
        _smooth_noise(rng, height, width, 12, 3)
    blotches = _smooth_noise(rng, height, width, 40, 40)
    fine = _smooth_noise(rng, height, width, 7, 7)
    fat = _sigmoid((blotches - rng.uniform(0.4, 1.4) - 1.5 * t_map) * 5)
    membranes = np.exp(-(fine / 0.18) ** 2)
    lumens = np.clip((fine - 2.0) * 3, 0, 1)
    tissue = ((1 - fat) * (1 - lumens) + fat * 0.8 * membranes).astype(np.float32)
    eosin = (0.20 + 0.035 * fibres + 0.03 * blotches) * tissue
    # Tumour cytoplasm and background take up some hematoxylin: a purple cast.
    hema = np.zeros((height + 2 * _NUCLEUS_RADIUS, width + 2 * _NUCLEUS_RADIUS), np.float32)
    inner = hema[_NUCLEUS_RADIUS:-_NUCLEUS_RADIUS, _NUCLEUS_RADIUS:-_NUCLEUS_RADIUS]
    inner += (0.04 + 0.16 * c_map + 0.02 * blotches) * tissue

    _stamp_all_nuclei(rng, hema, height, width, c_coarse, m_coarse * (1 - t_coarse),
                      np.ascontiguousarray(tissue[step // 2::step, step // 2::step]))
    return _stains_to_rgb(rng, inner, eosin, style)


def _stamp_all_nuclei(rng, hema, height, width, tumour, lymph, tissue) -> None:
    """Stroma, tumour and lymphocyte nuclei, placed by thinning uniform candidates.

    tumour, lymph and tissue are coarse maps (0..1) of tumour cellularity, lymphocyte aggregates
    and non-gap tissue.
    """
    area = height * width / records.PATCH_SIZE ** 2
    fibre_angle = rng.uniform(0, np.pi)
    kinds = [
        # (candidates per patch, acceptance map, radius, elongation, darkness, vesicular, angle)
        (20, (1 - tumour) * (1 - lymph) * tissue, (0.9, 1.4), (1.5, 2.8), (0.55, 0.95),
         0.0, lambda n: fibre_angle + rng.normal(0, 0.35, n)),
        (110, tumour * np.clip(tissue + 0.5, 0, 1), (1.2, 2.1), (1.0, 1.45), (0.6, 1.05),
         1.0, lambda n: rng.uniform(0, np.pi, n)),
        (150, lymph, (0.8, 1.2), (1.0, 1.15), (0.9, 1.25),
         0.0, lambda n: rng.uniform(0, np.pi, n)),
    ]
    step_y, step_x = height / tumour.shape[0], width / tumour.shape[1]
    for per_patch, accept_map, *shape_args in kinds:
        n = rng.poisson(per_patch * area)
        x, y = rng.uniform(0, width, n), rng.uniform(0, height, n)
        accept = accept_map[(y / step_y).astype(np.intp), (x / step_x).astype(np.intp)]
        keep = rng.random(n) < accept
        x, y = x[keep], y[keep]
        _stamp_nuclei(hema, x, y, *_nuclei(rng, len(x), shape_args), rng)


def _stains_to_rgb(rng, hema, eosin, style) -> np.ndarray:
    """Beer-Lambert: intensity = light * 10^-(optical density of both stains), plus sensor noise."""
    rgb = np.empty(hema.shape + (3,), np.uint8)
    value = np.empty(hema.shape, np.float32)
    for c in range(3):
        h = np.float32(-math.log(10) * style["h_strength"] * style["hematoxylin"][c])
        e = np.float32(-math.log(10) * style["e_strength"] * style["eosin"][c])
        np.multiply(hema, h, out=value)
        value += e * eosin
        np.exp(value, out=value)
        value *= np.float32(style["light"][c])
        value += rng.standard_normal(hema.shape, dtype=np.float32) * np.float32(2.5)
        value += np.float32(0.5)
        rgb[..., c] = np.clip(value, 0, 255, out=value)
    return rgb


# ----------------------------------------------------------------------------- patients

class _Patient:
    """One patient's slide: its cells, labels and rendered canvas."""

    def __init__(self, pid: str, seed: int, index: int, min_patches: int, max_patches: int,
                 restained: bool = False):
        rng = _rng(seed, _PATIENT_STREAM, index)
        self.pid = pid
        n = int(rng.integers(min_patches, max_patches + 1))
        self.rows, self.cols, self.cells = _tissue_cells(rng, n)
        centres_x = self.cells[:, 1] * records.PATCH_SIZE + records.PATCH_SIZE / 2
        centres_y = self.cells[:, 0] * records.PATCH_SIZE + records.PATCH_SIZE / 2
        size = records.PATCH_SIZE * math.sqrt(n)
        tumour = _random_regions(rng, centres_x, centres_y, 3, (0.15 * size, 0.45 * size), 30.0)
        # Lymphocyte aggregates: dense dark nuclei in benign tissue, the main tumour mimic.
        mimic = _random_regions(rng, centres_x, centres_y, 4, (30.0, 90.0), 8.0)
        # Positive fraction per patient ~ Beta, mean 0.26 (0.28 after label noise), like the real
        # 28.4%: some slides almost clean, some mostly IDC.
        target = rng.beta(1.4, 4.0)
        depth = tumour(centres_x, centres_y)
        threshold = np.quantile(depth, 1 - target)
        tumour.level = float(threshold)
        labels = (depth > threshold).astype(np.int64)
        flip = rng.random(n) < _LABEL_NOISE
        self.labels = np.where(flip, 1 - labels, labels)
        style = _stain_style(rng)
        self.canvas = _render_slide(rng, self.rows, self.cols, tumour, mimic,
                                    _restained(style) if restained else style)

    def patch(self, i: int) -> np.ndarray:
        row, col = self.cells[i]
        size = records.PATCH_SIZE
        return self.canvas[row * size:(row + 1) * size, col * size:(col + 1) * size]

    def name(self, i: int) -> str:
        row, col = self.cells[i]
        return patch_name(self.pid, int(col), int(row), int(self.labels[i]))


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- quirks

_DS_STORE = b"\x00\x00\x00\x01Bud1" + bytes(2048)        # Finder's folder settings
_THUMBS_DB = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(1016)  # Windows thumbnail cache (OLE)


def _apple_double(name: str) -> bytes:
    """A macOS AppleDouble resource file: `._<name>` next to the real file, not an image."""
    header = (b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"Mac OS X        " + b"\x00\x02"
              + b"\x00\x00\x00\x09\x00\x00\x00\x32\x00\x00\x0e\xb0"
              + b"\x00\x00\x00\x02\x00\x00\x0e\xe2\x00\x00\x01\x1e")
    return (header + b"\x00\x00ATTR" + name.encode()[:64]).ljust(4096, b"\x00")


class _QuirkPlan:
    """Which patches get which defect; chosen from their own random stream."""

    def __init__(self, seed: int, patients: list[_Patient]):
        rng = _rng(seed, _QUIRK_STREAM)
        self.undersized: dict[tuple[int, int], tuple[int, int]] = {}
        taken: set[tuple[int, int]] = set()
        for p, i, h, w in self._edge_cuts(rng, patients):
            self.undersized[(p, i)] = (h, w)
            taken.add((p, i))
        self.truncated = set(self._pick(rng, patients, 3, taken))
        taken |= self.truncated
        self.mislabelled = set(self._pick(rng, patients, 1, taken))
        taken |= self.mislabelled
        self.unparseable = self._pick(rng, patients, 1, set())[0]   # an extra file, any patch will do
        self.apple_double = set(self._pick(rng, patients, 6, taken))
        self.macosx = set(self._pick(rng, patients, 4, set()))
        # At least one of each kind, so every tree has the full set of litter.
        self.ds_store = {int(rng.integers(len(patients)))} | {
            p for p in range(len(patients)) if rng.random() < 0.4}
        self.thumbs = {(int(rng.integers(len(patients))), int(rng.integers(2)))} | {
            (p, c) for p in range(len(patients)) for c in (0, 1) if rng.random() < 0.1}

    @staticmethod
    def _edge_cuts(rng, patients):
        """A few right- or bottom-edge patches cut short, as where a real slide ends."""
        cuts = []
        for _ in range(4):
            p = int(rng.integers(len(patients)))
            cells = {tuple(c) for c in patients[p].cells.tolist()}
            right = [i for i, (r, c) in enumerate(patients[p].cells.tolist()) if (r, c + 1) not in cells]
            bottom = [i for i, (r, c) in enumerate(patients[p].cells.tolist()) if (r + 1, c) not in cells]
            side = int(rng.integers(3))   # 0: narrow, 1: short, 2: corner
            pool = right if side == 0 else bottom if side == 1 else sorted(set(right) & set(bottom)) or right
            i = int(pool[int(rng.integers(len(pool)))])
            if any((p, i) == (q, j) for q, j, _, _ in cuts):
                continue
            h = records.PATCH_SIZE if side == 0 else int(rng.integers(8, records.PATCH_SIZE))
            w = records.PATCH_SIZE if side == 1 else int(rng.integers(8, records.PATCH_SIZE))
            cuts.append((p, i, h, w))
        return cuts

    @staticmethod
    def _pick(rng, patients, k, taken):
        everything = [(p, i) for p, patient in enumerate(patients) for i in range(len(patient.cells))
                      if (p, i) not in taken]
        picks = rng.choice(len(everything), size=min(k, len(everything)), replace=False)
        return [everything[j] for j in sorted(picks)]


class _NoQuirks:
    """The plan of a clean tree."""
    undersized: dict = {}
    truncated = mislabelled = apple_double = macosx = ds_store = thumbs = frozenset()
    unparseable = None


# ----------------------------------------------------------------------------- writing

class _TreeWriter:
    """Writes each file under root and, with a duplicate dir, again under root/duplicate."""

    def __init__(self, root: str, duplicate: str | None):
        self.root, self.duplicate = root, duplicate
        self.litter: list[str] = []

    def write(self, rel: str, data: bytes, litter: bool = False, mirror: bool = True) -> None:
        targets = [rel] + ([f"{self.duplicate}/{rel}"] if self.duplicate and mirror else [])
        for target in targets:
            path = os.path.join(self.root, *target.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            if litter:
                self.litter.append(target)

    def mkdir(self, rel: str) -> None:
        for base in [rel] + ([f"{self.duplicate}/{rel}"] if self.duplicate else []):
            os.makedirs(os.path.join(self.root, *base.split("/")), exist_ok=True)


def _check_arguments(root, num_patients, patient_ids, min_patches, max_patches):
    if patient_ids is not None:
        if not patient_ids or any(not re.fullmatch(r"\d+", str(p)) for p in patient_ids):
            raise ValueError(f"patient_ids must be non-empty strings of digits, got {patient_ids!r}")
        if len(set(patient_ids)) != len(patient_ids):
            raise ValueError(f"patient_ids must be distinct, got {patient_ids!r}")
    elif not 1 <= num_patients <= 9000:
        raise ValueError(f"num_patients must be in 1..9000, got {num_patients}")
    if not 1 <= min_patches <= max_patches:
        raise ValueError(f"need 1 <= min_patches <= max_patches, got {min_patches}, {max_patches}")
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise FileExistsError(f"{root!r} exists and is not an empty directory; "
                              "write_dataset only writes into a new or empty one")


def write_dataset(root: str, num_patients: int = 20, seed: int = 0, patient_ids: list[str] | None = None,
                  min_patches: int = 60, max_patches: int = 300, quirks: bool = False,
                  restained_patients: int = 0) -> dict:
    """Writes the tree; returns a JSON-serializable summary.

    Summary keys: num_patients, num_patches (files named like patches at the top level, i.e. not
    the duplicate copy; includes undersized, truncated and mislabelled ones, excludes the
    unparseable file and litter), num_positive (by the class in the file name),
    patients {pid: {num_patches, num_positive}}, num_png_files (every file named *.png under root
    that is not litter: the duplicate copies count, AppleDouble `._*.png` files do not), and with
    quirks=True:
    duplicate_root ("IDC_regular_ps50_idx5", else None), undersized [{path, height, width}],
    truncated, mislabelled, unparseable (top-level relative paths; each also exists with the same
    bytes under duplicate_root) and litter (every litter file written, both copies).
    restained_patients: the last this many patients are stained as another lab stains
    (_OTHER_LAB; then listed in summary["restained"]): a split with them as test patients measures
    what stain normalisation buys. 0 (the default) changes nothing.
    """
    _check_arguments(root, num_patients, patient_ids, min_patches, max_patches)
    if patient_ids is None:
        patient_ids = _draw_patient_ids(_rng(seed, _IDS_STREAM), num_patients)
    patient_ids = [str(p) for p in patient_ids]
    os.makedirs(root, exist_ok=True)
    first_restained = len(patient_ids) - restained_patients
    patients = [_Patient(pid, seed, i, min_patches, max_patches, i >= first_restained)
                for i, pid in enumerate(patient_ids)]
    plan = _QuirkPlan(seed, patients) if quirks else _NoQuirks()
    writer = _TreeWriter(root, DUPLICATE_DIR if quirks else None)
    summary = {"num_patients": len(patients), "num_patches": 0, "num_positive": 0, "patients": {},
               "seed": seed, "quirks": bool(quirks), "duplicate_root": writer.duplicate,
               "undersized": [], "truncated": [], "mislabelled": [], "unparseable": [], "litter": []}
    if restained_patients:
        summary["restained"] = patient_ids[first_restained:]
    for p, patient in enumerate(patients):
        _write_patient(writer, p, patient, plan, summary)
    if quirks:
        _write_root_litter(writer, patients, plan)
    summary["litter"] = sorted(writer.litter)
    summary["num_png_files"] = _count_png_files(summary, writer)
    return summary


def _write_patient(writer, p, patient, plan, summary) -> None:
    for c in (0, 1):
        writer.mkdir(f"{patient.pid}/{c}")   # both folders, even when one stays empty
    for i, label in enumerate(patient.labels.tolist()):
        key, image, name = (p, i), patient.patch(i), patient.name(i)
        folder = 1 - label if key in plan.mislabelled else label
        rel = f"{patient.pid}/{folder}/{name}"
        if key in plan.undersized:
            h, w = plan.undersized[key]
            image = image[:h, :w]
            summary["undersized"].append({"path": rel, "height": h, "width": w})
        data = _encode_png(image)
        if key in plan.truncated:
            data = data[:len(data) // 2]   # cut inside the image data: undecodable
            summary["truncated"].append(rel)
        if key in plan.mislabelled:
            summary["mislabelled"].append(rel)
        writer.write(rel, data)
        if key in plan.apple_double:
            writer.write(f"{patient.pid}/{folder}/._{name}", _apple_double(name), litter=True)
        if key == plan.unparseable:
            # A scanner export that lost its y coordinate; the image itself is fine.
            col = int(patient.cells[i][1])
            odd = f"{patient.pid}/{label}/{patient.pid}_idx5_x{1 + records.PATCH_SIZE * col}_class{label}.png"
            writer.write(odd, _encode_png(image[:, ::-1]))
            summary["unparseable"].append(odd)
    positives = int(patient.labels.sum())
    summary["patients"][patient.pid] = {"num_patches": len(patient.labels), "num_positive": positives}
    summary["num_patches"] += len(patient.labels)
    summary["num_positive"] += positives
    _write_patient_litter(writer, p, patient, plan)


def _write_patient_litter(writer, p, patient, plan) -> None:
    if p in plan.ds_store:
        writer.write(f"{patient.pid}/.DS_Store", _DS_STORE, litter=True)
    for c in (0, 1):
        if (p, c) in plan.thumbs:
            writer.write(f"{patient.pid}/{c}/Thumbs.db", _THUMBS_DB, litter=True)


def _write_root_litter(writer, patients, plan) -> None:
    for rel in (".DS_Store", f"{DUPLICATE_DIR}/.DS_Store"):
        writer.write(rel, _DS_STORE, litter=True, mirror=False)
    # What unzipping a macOS-made archive leaves behind.
    for p, i in sorted(plan.macosx):
        patient = patients[p]
        name = patient.name(i)
        folder = 1 - patient.labels[i] if (p, i) in plan.mislabelled else patient.labels[i]
        writer.write(f"__MACOSX/{patient.pid}/{folder}/._{name}", _apple_double(name),
                     litter=True, mirror=False)


def _count_png_files(summary, writer) -> int:
    """Files named *.png that are not litter (AppleDouble `._*.png` excluded), both copies."""
    copies = 2 if writer.duplicate else 1
    return (summary["num_patches"] + len(summary["unparseable"])) * copies


def render_patches(seed: int, index: int, count: int, restained: bool = False) -> np.ndarray:
    """uint8 [count, 50, 50, 3]: the patches of one generated patient (index under seed), in
    memory, for benchmarks and tests that need H&E-like patches without a tree on disk."""
    patient = _Patient(str(index), seed, index, count, count, restained)
    return np.stack([patient.patch(i) for i in range(count)])
