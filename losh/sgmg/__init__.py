"""SgMg's own parts (LoSh-S)."""
