"""The Beam jobs: the two halves as composite transforms, and `openwit curate`, `openwit
download` and `openwit build`."""
