"""Capture: changes under the mirrored paths become ordered ops (``watch`` now, ``mount`` next)."""
