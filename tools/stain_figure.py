"""The before/after picture of docs/stain.md (docs/figures/stain_normalization.png).

    python tools/stain_figure.py --output=docs/figures/stain_normalization.png

Rows: 8 synthetic patches (4 patients of one lab, 4 patients of another: `restained`), then the
same patches Reinhard- and Macenko-normalised to a target fitted on the first lab's patches.
"""

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

FLAGS = flags.FLAGS
flags.DEFINE_string("output", "docs/figures/stain_normalization.png", "The PNG to write.")
flags.DEFINE_integer("upscale", 3, "Pixels per patch pixel.")


def main(argv) -> None:
    del argv
    from idc_engine import atomic_files
    from idc_engine.data import synthetic
    from idc_engine.input import stain, stain_target

    first_lab = [synthetic.render_patches(seed=2, index=i, count=120) for i in range(4)]
    other_lab = [synthetic.render_patches(seed=2, index=i, count=120, restained=True)
                 for i in range(4, 8)]
    target = stain_target.fit_target(np.concatenate(first_lab))
    shown = np.stack([p[int(np.argmax(stain.tissue_mask(stain.optical_density(p)).numpy()
                                      .mean(axis=1)[:60]))] for p in first_lab + other_lab])
    rows = [shown] + [np.clip(stain.normalize(shown, m, target[m]).numpy(), 0, 255)
                      .astype(np.uint8) for m in ("reinhard", "macenko")]
    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    image = Image.fromarray(grid).resize((grid.shape[1] * FLAGS.upscale,
                                          grid.shape[0] * FLAGS.upscale), Image.NEAREST)
    labelled = Image.new("RGB", (image.width + 90, image.height), "white")
    labelled.paste(image, (90, 0))
    draw = ImageDraw.Draw(labelled)
    for i, name in enumerate(("original", "Reinhard", "Macenko")):
        draw.text((4, i * 50 * FLAGS.upscale + 70), name, fill="black")
    with atomic_files.replace_atomically(FLAGS.output, "wb") as f:
        labelled.save(f, format="PNG")
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
