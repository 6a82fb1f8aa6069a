"""vigil-endpoint: execution control on a Linux host (fanotify permission events)."""
