"""The orchestration layer below the router: the router picks a deployment, a `Fleet` picks its instance."""
