"""The agent's HTTP API: read-only health, status and metrics on loopback TCP, and the
control routes.
"""
