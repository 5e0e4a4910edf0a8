"""Preference data: file adapters (`sources`), deterministic splits and A/B order (`splits`)."""
