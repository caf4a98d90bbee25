#!/usr/bin/env bash
# The main job on the embedded synthetic IDC-like dataset, as `make demo` runs it:
#   1. generate a Kaggle-layout tree with every real-world quirk (duplicate tree, undersized and
#      truncated patches, litter, a mislabelled and an unparseable file),
#   2. convert it to patient-sharded TFRecords and print the conversion report,
#   3. re-read every shard against the manifest,
#   4. train CancerNet for a short run on the CPU and print its validation metrics,
#   5. evaluate it on the test split: threshold chosen on validation, patch- and patient-level
#      metrics with bootstrap confidence intervals, plots and slide maps,
#   then whole-slide inference on a pyramidal TIFF of the test split's patches at their (x, y),
#   and the command that shows that slide in the viewer (idc-view).
# Idempotent: every run regenerates the same tree (fixed seed) and starts training afresh.
set -euo pipefail
# Drops TensorFlow's C++ start-up lines ("I0000 ... oneDNN", "cuInit" on a machine without a
# GPU). Line by line (--line-buffered): writing into a pipe, grep would otherwise keep its output
# in blocks of a few KB, and a step's progress lines would all appear when it ends.
quiet() { grep --line-buffered -v -E "^(WARNING: All log messages|[IWE]0000 |To enable the following instructions)" || true; }
RUN_DIR=${RUN_DIR:-runs/demo}
TREE="$RUN_DIR/idc_synthetic"
DATA="$RUN_DIR/tfrecords"
MODEL="$RUN_DIR/cancernet"

echo "== 1/6 generate the embedded dataset into $TREE"
rm -rf "$TREE"
python -m idc_engine.synthetic --output_dir="$TREE" --num_patients=40 --seed=0 --quirks

echo "== 2/6 convert to TFRecords in $DATA"
python -m idc_engine.convert --input_dir="$TREE" --output_dir="$DATA" --overwrite

echo "== 3/6 verify every shard against $DATA/manifest.json"
python -m idc_engine.convert --verify --output_dir="$DATA" 2>&1 | quiet

echo "== 4/6 train CancerNet (flags/cpu_quick.flags) into $MODEL"
rm -rf "$MODEL"
# the progress lines as they are logged (absl, on stderr); then the run's summary, without the
# JSON copy of it printed last for programs (sed -u: unbuffered too, for `make demo | tee log`)
python -m idc_engine.train --flagfile=flags/cpu_quick.flags --data_dir="$DATA" \
  --model_dir="$MODEL" --logtostderr 2>&1 | quiet | sed -u '/^{/,$d'

echo "== 5/6 evaluate on the test split"
python -m idc_engine.evaluate --model_dir="$MODEL" --data_dir="$DATA" 2>&1 | quiet

SLIDES="$RUN_DIR/slides"
echo "== 6/6 whole-slide inference: a pyramidal TIFF of the test patches at their (x, y), then idc-slide"
mkdir -p "$SLIDES"
python tools/make_slide.py --data_dir="$DATA" --split=test --output="$SLIDES/test_split.tiff" 2>&1 | quiet
python -m idc_engine.slide --model_dir="$MODEL" --output_dir="$SLIDES" "$SLIDES/test_split.tiff" 2>&1 | quiet | sed -u '/^{/,$d'
echo
echo "See the slide at full resolution with its IDC overlay in your browser:"
echo "  .venv/bin/idc-view $SLIDES      # or: python -m idc_engine.view $SLIDES"
