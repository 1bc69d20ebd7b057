"""Lightning modules (one per training stage) and the data module that owns every loader."""
