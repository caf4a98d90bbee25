"""Stage 6, an exported model -> predictions: serving the SavedModel, PNG patch files,
explanations. Imports the earlier stages only."""
