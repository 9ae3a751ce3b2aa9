"""jobkit's schema migrations (Alembic). How to add one: README.md in this folder."""
