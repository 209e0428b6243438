"""Transport: framed, versioned messages over mutual TLS."""
