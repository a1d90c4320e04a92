"""Bulk indexer and the imsearch command line."""
