#!/usr/bin/env bash
# The main job on the embedded synthetic IDC-like dataset, as `make demo` runs it:
#   1. generate a Kaggle-layout tree with every real-world quirk (duplicate tree, undersized and
#      truncated patches, litter, a mislabelled and an unparseable file),
#   2. convert it to patient-sharded TFRecords and print the conversion report,
#   3. re-read every shard against the manifest.
# Idempotent: every run regenerates the same tree (fixed seed) and replaces the conversion.
set -euo pipefail
RUN_DIR=${RUN_DIR:-runs/demo}
TREE="$RUN_DIR/idc_synthetic"
DATA="$RUN_DIR/tfrecords"

echo "== 1/3 generate the embedded dataset into $TREE"
rm -rf "$TREE"
python -m idc_engine.synthetic --output_dir="$TREE" --num_patients=40 --seed=0 --quirks

echo "== 2/3 convert to TFRecords in $DATA"
python -m idc_engine.convert --input_dir="$TREE" --output_dir="$DATA" --overwrite

echo "== 3/3 verify every shard against $DATA/manifest.json"
python -m idc_engine.convert --verify --output_dir="$DATA"
