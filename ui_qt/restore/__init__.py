"""The restore browser: pick a snapshot, tick what to bring back, choose where, confirm."""
