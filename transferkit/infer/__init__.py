"""Running a model on inputs, shared by training, evaluation, predict, serve, embed and zero-shot:
datasets and loaders (loaders), predicted probabilities with TTA (predict, tta, sharded,
length_sort), backbone features and their cache (features, probe_views) and prediction rows
(predictions). Nothing here trains or writes a run."""
