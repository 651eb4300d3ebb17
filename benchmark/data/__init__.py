"""Data layer: read a task's splits (Hub, mirror or local files), render, tokenize, cache, batch."""
