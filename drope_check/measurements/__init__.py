"""Measurements files: built from a pair under a protocol, read and validated."""
