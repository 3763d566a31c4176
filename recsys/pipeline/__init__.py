"""The one recommend path, torch-free: request rows, retrieval, ranker features, ranking."""
