"""What operators read: the status snapshot and JSON shapes (``status``), and whether a restore or retry
may be asked (``requests``). Reads storage and settings only."""
