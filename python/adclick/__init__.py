"""adclick: an ad and affiliate click tracker built for latency."""

__version__ = "0.1.0"
