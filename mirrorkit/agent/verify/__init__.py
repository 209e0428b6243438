"""Online verification: manifests, comparison, repair."""
