"""The image half's stages, 8-10: download (one HTTP request each: `fetch`), image dedup, the
exact cap."""
