"""CLIP for openwit (`openwit.model`): model sizes (`config`), the towers and `build_model`
(`model`), the caption tokenizer (`tokenizer`), the contrastive loss (`loss`), the WebDataset
loader (`data`), `openwit train` (`train`), `openwit eval` (`evaluate`), and their configs and
flags (`options`).

Nothing is imported here so that `import openwit.model.options` stays cheap (no torch at
import time).
"""
