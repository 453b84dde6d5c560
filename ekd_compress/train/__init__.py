"""Training: datasets over lhotse CutSets, one training job (job.py: TrainJob -> TrainResult),
the Lightning module and its weighted losses, and the fit loop."""
