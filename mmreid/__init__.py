"""mmreid: the library behind train.py, eval.py and data_scripts/ for the multi-modal ReID family (DeMo, NEXT, ...):
data, training, evaluation, export, the Hub, galleries.

The models live in the top-level ``configuration_*.py`` / ``modeling_*.py`` files (the family's ``*_reid.py`` and
each model's own) so that ``save_pretrained`` can ship them as self-contained remote code; :mod:`mmreid.models`
is the registry of the built-in ones.
"""

__version__ = "0.1.0"
