"""Trigger -> stored plan (``planning``) and the triggers the clock raises (``ttl``)."""
