"""evohub: Evolutionary Model Merge as a Hugging Face Hub batch job and model publisher."""

__version__ = "0.1.0"
