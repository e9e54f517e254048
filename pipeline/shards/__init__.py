"""Shards: stage 7 plans them before download, stage 12 writes them and the corpus summary."""
