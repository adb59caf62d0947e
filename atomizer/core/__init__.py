"""Core: paths and package data, atomic storage, runtime settings (device, allocator, precision), the
config base. Imports nothing else of the package."""
