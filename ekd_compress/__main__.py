"""`python -m ekd_compress ...` = `ekd-compress ...` (and `torchrun ... -m ekd_compress distill RECIPE`)."""
from ekd_compress.cli.main import cli

if __name__ == "__main__":
    cli()
