"""Training: datasets over lhotse CutSets, the Lightning module, and the fit loop."""
