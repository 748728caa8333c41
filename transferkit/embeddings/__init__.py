"""Using a pretrained model with few or no target labels: pooled embeddings written to files
(`embed`), nearest-class-mean and k-NN classification from a handful of labels (`knn`), and k-means
clusters with a contact sheet per cluster (`cluster`). All of them read frozen features through the
feature cache (`transferkit.data.feature_cache`)."""

from .embed import Embeddings, compute_embeddings, write_embeddings

__all__ = ["Embeddings", "compute_embeddings", "write_embeddings"]
