"""Stage 8, after evaluation: an exported model on whole-slide images (python -m idc_engine.slide).

    reader        OpenSlide: the slide's scale, the pyramid level to read, regions from threads
    tissue        the tissue mask (Otsu on the thumbnail's saturation) and each tile's share
    tiles         the tile grid at the model's scale, tissue tiles streamed through tf.data
    predict       the served model on the tile batches, resized on the device, under a strategy
    outputs       tiles.csv, idc.geojson, tissue_mask.png, summary.json (atomic)
    heatmap       heatmap.png (evaluation's plot style)
    config        the command's flags, the model's scale from its export
    run           the phases of one slide
    pyramid_tiff, truth_slide   slides of known truth from patches (demo, tests, benchmark)
"""
