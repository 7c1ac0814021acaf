"""Networks over images: folders, engines, tiling, export and import of weights."""
