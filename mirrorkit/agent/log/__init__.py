"""The mirror log: records (``records``) and segments (``segments``)."""
