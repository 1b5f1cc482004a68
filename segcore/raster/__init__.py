"""Raster I/O, tiling grids, blending (torch, on the inference device) and output writing; no Ray."""
