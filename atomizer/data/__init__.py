"""Data: sensors and bands, readers (files -> xarray images on native grids), datasets, modalities.
Ships the sensor tables (``sensors/``) and modality sets (``modality_sets/``) as package data."""
