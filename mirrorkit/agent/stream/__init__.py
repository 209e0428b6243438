"""Streaming the log: the worker base, the primary's sender and the receivers."""
