"""The manager role: staff pages and the JSON API for campaign set-up, users and API tokens (FastAPI)."""
