"""Alembic migrations, run with `adclick migrate` (see adclick.core.db.migrate); no alembic.ini needed."""
