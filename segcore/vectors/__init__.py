"""Building footprints as vectors, from segmentation masks computed block by block; Ray-free.

- `polygonize`: one block's core mask -> buildings inside it and fragments cut by its seams (`BlockVectors`,
  storable as bytes), in mosaic pixel coordinates so that seams join exactly.
- `merge`: `FragmentMerger` joins fragments across seams as blocks arrive, in any order.
- `shapes`: hole filling, minimum area, simplification, regularization and validity in ground units, then
  the raster's CRS (or EPSG:4326): `clean_buildings`, `to_footprints`.
- `regularize`: right-angled outlines along a building's dominant orientation.
- `write`: GeoParquet, GeoPackage, FlatGeobuf or GeoJSON files, written in batches.
- `truth`: true building polygons from vector files, on the image's pixel grid.
- `objects`: object-level precision, recall and F1 with SpaceNet's matching, streamed block by block.
"""
