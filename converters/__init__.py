"""Conversion routes behind one Converter protocol, keyed by (source, target)."""
