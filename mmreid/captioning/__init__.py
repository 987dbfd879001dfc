"""Caption generation for multi-modal ReID data, after the NEXT caption pipeline.

Multi-modal LLMs describe each modality image as ``attribute: value, confidence: x`` lines;
the answers of all modalities and models are merged per attribute by confidence and written
into a fixed template per kind (person / vehicle) and modality.  One module per step:

``schema`` (attributes and allowed values) -> ``prompts`` -> a backend (``backend_openai``,
``backend_transformers``) -> ``parser`` -> ``merge`` -> ``render`` (optionally ``rewrite``)
-> ``store`` (the released ``{train,test}_{RGB,NI,TI}.json`` files); ``items`` lists what to
caption, ``stats`` measures any caption folder and ``pipeline`` ties the steps together.
"""
