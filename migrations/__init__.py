"""Alembic migrations for CumApp's schema."""
