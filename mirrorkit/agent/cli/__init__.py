"""The agent's own command line (``mirrorkit-agent``): daemon, status, probe, manifest,
repair, resync.
"""
