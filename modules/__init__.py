"""Lightning modules (one per training stage) and the data module that owns every loader.

``MODULES`` maps ``--module-name`` to its class: each stage builds on the shared base module,
``smhm`` on ``spatial_mix``. A class is imported when it is asked for, so the names (``main.py``'s
choices) and each stage's flags (``modules/config.py``) need no torch.
"""
from utils.cli import Registry

MODULES = Registry({
    "basic": "modules.basic.BasicModule",
    "source_only": "modules.source_only.SourceOnlyModule",
    "baseline": "modules.baseline.BaselineModule",
    "spatial_mix": "modules.spatial_mix.SpatialMixModule",
    "smhm": "modules.smhm.SMHMModule",
})
