"""Embeddings of face crops, FAISS indexes, kNN mining and near-duplicates."""
