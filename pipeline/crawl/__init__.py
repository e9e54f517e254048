"""Candidates from a web crawl: WAT and WARC files -> (image URL, alt text) pairs."""
