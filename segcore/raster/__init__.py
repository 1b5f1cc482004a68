"""Raster I/O, tiling grids, blending and output writing: plain rasterio/numpy, no Ray."""
