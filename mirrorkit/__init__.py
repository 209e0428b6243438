"""mirrorkit: declarative high-availability data mirroring."""

__version__ = "0.1.0"
