"""instatag: learn the hashtags uploaders give #recipe photos, retrain on every scrape."""

__version__ = "0.1.0"
