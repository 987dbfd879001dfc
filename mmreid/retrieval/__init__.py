"""After training: embed a collection with a checkpoint into a gallery, keep it (append, delete), search it by image
triple or embedding, with filters applied before ranking.

``sources`` opens what to embed (an Arrow dataset, a Hub id, a folder of image triples), ``embed`` embeds it (every
process its shard, rank 0 writes) into a store: ``store`` says what every store offers and picks one by the
location's form (``faiss_store``: a folder with a FAISS index from ``index``; ``milvus_store``: a Milvus Lite file
or a Milvus server), ``filters`` says which rows a search may return, ``query`` turns an image triple into an
embedding through the checkpoint's processor, ``search`` ranks a gallery (and re-ranks), ``service`` is the demo
page's back end.
"""
