"""The HTTP edge: /ask, /mcp, /sites, /who, /health, /ready and the chat page."""
