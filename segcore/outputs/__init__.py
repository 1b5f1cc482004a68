"""Segmentation outputs, above inference and labels; Ray-free.

- `blockfile`: one block's results (mask, probability, preview thumbnail, raw building vectors) as one file,
  the unit of resume.
- `preview`: the overlay PNG, from block thumbnails (or the image itself) and the mask or footprints.
- `components`: counting buildings of a mosaic fed block by block.
- `assemble`: a mosaic's block files streamed into its mask COG, metrics, footprints and preview.
"""
