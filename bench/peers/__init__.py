"""Peer apps the benchmark measures wsapp against (not part of wsapp)."""
