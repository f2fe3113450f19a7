"""Model loading, normalisation and channel-dependency analysis."""
