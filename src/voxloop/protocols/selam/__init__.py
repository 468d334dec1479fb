"""SelamGPT Voice Agent (seed 002): Socket.IO namespace ``/v1/audio/agent`` on the server's port.

``server.py`` mounts the python-socketio server at ``/socket.io/``; ``agent.py`` is one
connection (one engine Session); ``options.py`` checks ``start_session`` and maps its knobs.
"""
