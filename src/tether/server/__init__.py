"""The server side: the App (ASGI), its dispatcher, OpenAPI and health checks."""
