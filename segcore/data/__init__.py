"""Training data: the patch dataset on disk (layout, manifest, decoding) and what reads it (no Ray)."""
