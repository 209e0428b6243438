"""Apply: records into a replica root, strictly in LSN order, durably, never outside the root."""
