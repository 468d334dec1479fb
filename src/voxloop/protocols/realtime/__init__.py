"""OpenAI Realtime API compatible endpoint at ``/v1/realtime`` (GA and beta event names)."""
