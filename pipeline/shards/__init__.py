"""Shards: stage 7 plans them before download, stage 11 writes them and the corpus summary."""
