"""After training: embed a collection with a checkpoint, index it with FAISS, search it by image triple or embedding.

``sources`` opens what to embed (an Arrow dataset, a Hub id, a folder of image triples), ``embed`` writes the
embeddings (every process its shard, rank 0 writes), ``index`` builds / saves / loads the FAISS index beside them,
``query`` turns an image triple into an embedding through the checkpoint's processor, ``search`` ranks a gallery.
"""
