"""The arbiter: the witness (``witness``) and the failover members' link to it (``link``)."""
