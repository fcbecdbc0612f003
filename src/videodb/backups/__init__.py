"""Backups: the repository, continuous WAL archiving, base backups and dumps, verification,
and restores (logical, and physical with point-in-time recovery)."""
