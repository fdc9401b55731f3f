"""Engine adapters behind one `Provider` protocol."""
