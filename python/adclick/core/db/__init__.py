"""The database: SQLAlchemy models shared by the worker and the manager, sessions, upserts, migrations."""
