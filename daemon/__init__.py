"""Sir Convert-a-Lot: the hot-folder daemon (lifecycle of a dropped file)."""
