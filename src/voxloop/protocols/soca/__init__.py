"""Soca AI voice WebSocket (seed 003) at ``/v1/voice-ws`` and ``/chat/agent/voice-ws``."""
