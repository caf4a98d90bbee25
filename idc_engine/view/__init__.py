"""Stage 9, after slides: the slides' outputs in a browser (python -m idc_engine.view OUT_DIR).

    catalog       the slides idc-slide wrote into OUT (summary.json), each opened once
    deepzoom      OpenSlide's Deep Zoom tiles, encoded once into an LRU
    overlay       every analysed tile's P(IDC) at its grid cell, for the page to colour
    server        the localhost HTTP server: the page, the catalog, each slide's files
    static/       the page (index.html, viewer.js, viewer.css) and OpenSeadragon (vendor/)
"""
