"""Files that outlive a run: atomic writes, safe loading, checksummed derived files, content fingerprints, and
the source-model and frozen-feature caches built on them."""
