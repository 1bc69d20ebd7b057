"""Tools beside the entry scripts, not part of the library the stages import: the synthetic
two-domain benchmark renderer (``python -m tools.synthetic``) and the speed benchmark
(``python -m tools.benchmark``)."""
