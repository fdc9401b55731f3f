"""The hybrid router: which deployment serves a request, with circuit breakers and fallback chains."""
