"""curate: from an image board to a clean, labelled anime-face dataset and a StyleGAN2 trained on it."""

__version__ = "0.1.0"
HOMEPAGE = "https://github.com/curate-dataset/curate"
USER_AGENT = f"curate/{__version__} (+{HOMEPAGE})"
