"""Shared library code for train.py and eval.py (data loading, losses, samplers, metrics).

The model itself lives in the top-level ``configuration_demo.py`` / ``modeling_demo.py`` so that
``save_pretrained`` can ship it as self-contained remote code.
"""

__version__ = "0.1.0"
