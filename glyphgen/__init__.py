"""glyphgen: diffusion models that write the text you give them into the image."""

__version__ = "0.1.0"
