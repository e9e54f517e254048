"""CLIP for openwit: model sizes (`model.config`), the towers and `build_model` (`model.model`),
the caption tokenizer (`model.tokenizer`) and the contrastive loss (`model.loss`).

Nothing is imported here so that `import model.config` stays cheap (no torch at import time).
"""
