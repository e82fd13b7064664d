"""Data: MIMIC-CXR reading, pixel decoding, preprocessing into a store, study batches, demo data."""
