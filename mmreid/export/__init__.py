"""ONNX export of a DeMo or NEXT checkpoint (``data_scripts/export_onnx.py`` is its command line).

``graph`` (the exported module and its inputs, one graph per combination of optional inputs), ``writer``
(``torch.onnx.export`` and int8 quantization into a file), ``check`` (ONNX Runtime against PyTorch),
``checkpoint`` (a checkpoint folder to checked, published files). See docs/export.md.
"""
