"""Governance: who may call, within which limits, and the audit log of what they did."""
