"""imlab: a laboratory for the evolution of an instant-messaging server."""

__version__ = "0.1.0"
