"""Lightning modules (one per training stage) and the data module that owns every loader.

``MODULES`` maps ``--module-name`` to its class: each stage builds on the shared base module,
``smhm`` on ``spatial_mix``.
"""
from modules.baseline import BaselineModule
from modules.basic import BasicModule
from modules.smhm import SMHMModule
from modules.source_only import SourceOnlyModule
from modules.spatial_mix import SpatialMixModule

MODULES = {
    "basic": BasicModule,
    "source_only": SourceOnlyModule,
    "baseline": BaselineModule,
    "spatial_mix": SpatialMixModule,
    "smhm": SMHMModule,
}
