"""The text half's stages, 1-6: read, normalise, match, URL dedup, balance, language."""
