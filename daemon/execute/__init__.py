"""Carrying plans out: due plans through the guards to the registry (``executor``), tags pushed again
while they were being untagged put back (``repair``), and operators' restore and retry (``operator``)."""
