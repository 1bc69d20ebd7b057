"""Shared helpers: label tables, metrics, file I/O, command-line plumbing, SpatialMix and EMA."""
