"""Stage 5, an exported model -> predictions and explanations. Imports the earlier stages only.

    serving.py              the SavedModel as deployed (ServedModel) and a split run through it
    runtime.py              --runtime: the SavedModel or the export's int8 model, and why
    patch_files.py          PNG files -> patches: listing inputs (litter skipped), decoding ahead
                            in threads, padding as the converter does; name and padding fields
    prediction_rows.py      the predictions CSV's rows, per file or per record of a split
    prediction_csv.py       writing that CSV atomically, and the summary printed after it
    gradcam.py              the export's Keras model (Explainer), layer choice, Grad-CAM, feature maps
    patch_selection.py      which patches to explain: --explain entries, files, records of a split
    explanation_figures.py  the PNG figures: Grad-CAM, feature-map grid, sheet of overlays
    explanations.py         explaining a list of patches into a folder, and its explanations.csv
"""
