"""Shared foundations: typed configuration, paths, model specs and loading, tracking."""
