"""Stage 1, the download -> TFRecords: reading the Kaggle tree, splitting patients, writing and
verifying shards, the manifest, and the synthetic stand-in dataset. Imports no other stage."""
