"""Domain types and the error tree. Stdlib + pydantic only; imports nothing else of the project."""
