"""The applications on top: the `openwit` command, the demo, the report, the mini-web."""
