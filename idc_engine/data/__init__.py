"""Stage 1, the download -> TFRecords: reading the Kaggle tree, splitting patients, writing and
verifying shards, the manifest, and the synthetic stand-in dataset. Imports no other stage.

    conversion.py           convert_tree: check, scan, split, plan the shards, run the workers, commit
    staging.py              the converter's entries in an output dir; commit_conversion (no data loss)
    worker_pool.py          the worker processes (forkserver), the shard tasks run in them, progress
    conversion_manifest.py  build_manifest: the manifest of a finished conversion; channel_stats
    conversion_report.py    format_report: the text printed after a conversion
    kaggle_tree.py          scanning the Kaggle tree: patch names, duplicates, litter, fingerprint
    splits.py               patient -> split: stratified, published (split_lists/), from a file
    shard_writer.py         a worker's task: decode the patches of one shard and write it
    patch_png.py            the one PNG patch decoder (converter and predict)
    direct_file.py          the shard file writer (O_DIRECT where the file system allows it)
    records.py              the record schema: PATCH_SIZE, IMAGE_SHAPE, IMAGE_ENCODINGS, FEATURES
    manifest.py             manifest.json's layout and its one reader; ManifestError
    verify.py               --verify: re-read every shard and check it against the manifest
    synthetic.py            the synthetic dataset in the Kaggle layout (idc_engine.synthetic)
"""
