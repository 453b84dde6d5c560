"""Shared test settings: CPU only, few threads, deterministic."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
