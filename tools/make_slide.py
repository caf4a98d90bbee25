"""Builds a pyramidal TIFF from a converted split's patches at their (x, y), and its truth CSV.

    python tools/make_slide.py --data_dir=runs/demo/tfrecords --split=test --output=slide.tiff

The demo's last step runs python -m idc_engine.slide on it (idc_engine/slides/truth_slide.py).
"""

from absl import app, flags

flags.DEFINE_string("data_dir", None, "A directory written by python -m idc_engine.convert.")
flags.DEFINE_string("split", "test", "The split whose patches make the slide.")
flags.DEFINE_string("output", "slide.tiff", "The TIFF to write; the truth goes to <output>.truth.csv.")
flags.DEFINE_float("um_per_pixel", 2.5, "Level-0 scale: 4.0 x 50 / um_per_pixel must be a whole "
                   "number divisible by 4 (three levels).")


def main(argv) -> int:
    from idc_engine.slides import truth_slide

    output = flags.FLAGS.output
    patches = truth_slide.read_split(flags.FLAGS.data_dir, flags.FLAGS.split)
    made = truth_slide.write_truth_slide(output, output + ".truth.csv", patches,
                                         flags.FLAGS.um_per_pixel)
    print(f"{output}: {made['width']}x{made['height']} pixels at {flags.FLAGS.um_per_pixel} um/px, "
          f"{made['patches']:,} patches of the {flags.FLAGS.split} split at their (x, y); "
          f"truth in {output}.truth.csv")
    return 0


if __name__ == "__main__":
    flags.mark_flag_as_required("data_dir")
    app.run(main)
