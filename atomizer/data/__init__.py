"""Data: sensors and bands, readers (files -> xarray images on native grids), datasets, modalities.
Ships the sensor tables (``sensors/``) and modality sets (``modality_sets/``) as package data.

One module per job: ``bands`` (bands and sensors), ``image`` (the image model), ``raster`` (confined raster
opening), ``layouts`` (our own layouts: BigEarthNet, EuroSAT, band folders), ``metadata`` and ``products``
(SAFE, Landsat, STAC), ``readers`` (``open_image``, the dispatch), ``light`` (the loaders' image without
xarray), ``datasets``, ``lmdb_store``, ``modalities``, ``augment``, ``unlabelled``."""
