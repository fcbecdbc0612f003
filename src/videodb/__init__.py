"""The video platform's replicated PostgreSQL: Patroni + etcd + HAProxy, managed from one CLI."""

__version__ = "0.1.0"
