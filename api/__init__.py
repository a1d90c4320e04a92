"""HTTP API (FastAPI) and web page."""
