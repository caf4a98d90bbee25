"""--quick, the same flag on every benchmark: its whole default command at tiny sizes.

Every figure, baseline and sub-measurement of the default command runs, through the same code,
on inputs the benchmark generates itself when it is given none (an untrained model where it
takes one); only sizes and repetitions shrink. That takes 10-60 s, but 2-3 minutes for
train_step and stain_shift, whose every setting is a training process of its own (each start of
TensorFlow alone costs ~5 s on 2 cores). The JSON and TensorBoard go to --output_dir as
usual (by default a `quick/` folder beside the full runs' results, so a quick run never replaces
a measurement), marked `"quick": true` in their config. It checks that a command still runs end
to end after a change of format or API (tests/test_benchmarks_quick.py runs every one); its
figures measure nothing.

    from benchmarks import quick
    quick.define_flag()                                  # beside the benchmark's own flags
    quick.apply({"repeats": 1, "num_images": 64})        # first thing in main()
"""

import os

from absl import flags

FLAGS = flags.FLAGS


def define_flag() -> None:
    flags.DEFINE_bool("quick", False, "Run the whole default command (every figure, baseline "
                      "and sub-measurement) at tiny sizes, in seconds: a check that it runs, not "
                      "a measurement. Generates its own inputs when given none; flags given "
                      "explicitly keep their values.")


def apply(sizes: dict) -> None:
    """With --quick: each flag of `sizes` not given on the command line takes its tiny value,
    and an --output_dir left at its default gains a `quick/` folder. Without: nothing."""
    if not FLAGS.quick:
        return
    for name, value in {**sizes, "output_dir": os.path.join(FLAGS.output_dir, "quick")}.items():
        if not FLAGS[name].present:
            setattr(FLAGS, name, value)
