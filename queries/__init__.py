"""Query tables: the concept strings a caption must contain to enter the corpus."""
