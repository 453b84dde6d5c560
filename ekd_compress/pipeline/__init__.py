"""The `distill` pipeline: resumable stages from data to results."""
