"""Shared library code for train.py and eval.py (data loading, losses, samplers, metrics).

The models live in the top-level ``configuration_*.py`` / ``modeling_*.py`` files (the family's ``*_reid.py`` and
each model's own) so that ``save_pretrained`` can ship them as self-contained remote code; :mod:`demo_reid.models`
is the registry of the built-in ones.
"""

__version__ = "0.1.0"
