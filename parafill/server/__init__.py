"""`parafill serve`: an OpenAI-compatible HTTP server over parafill's local engine."""

from parafill.server.app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
